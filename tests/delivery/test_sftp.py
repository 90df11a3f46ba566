"""SFTP delivery against a real OpenSSH sshd on loopback (tests/sshd.py): the outbox worked by the
deliverer, with every failure class the issue names.  No broker: the outbox's store is in memory
and the journal events are collected; the e2e tests run the same with a worker."""

from __future__ import annotations

import asyncio
import hashlib
import time
from pathlib import Path

import pytest

from stream_app.config import SftpDestinationSettings
from stream_app.core.records import SourceRecord
from stream_app.core.windows import FileCut, FileKey
from stream_app.delivery.deliverer import Deliverer
from stream_app.delivery.sftp import SftpDestination
from stream_app.ops.metrics import Metrics
from stream_app.pipeline.journal import Journal
from stream_app.pipeline.memory import MemoryOutboxStore
from stream_app.pipeline.outbox import Delivery, Outbox
from stream_app.sinks.local import LocalSink
from tests.helpers import CollectingPublisher
from tests.sshd import Sshd, keygen, sshd_missing

pytestmark = pytest.mark.skipif(sshd_missing() is not None, reason=str(sshd_missing()))

OWNER = ("in", 0)


@pytest.fixture
def sshd(tmp_path: Path):
    server = Sshd(tmp_path / "sshd").start()
    yield server
    server.stop()


def written_files(sink: LocalSink, count: int, size: int = 50_000) -> list[tuple[FileCut, object]]:
    out = []
    for i in range(count):
        body = hashlib.sha256(str(i).encode()).hexdigest().encode() * (size // 64)
        cut = FileCut.of(FileKey("in", 0, 3_600_000 * i, 3_600_000 * (i + 1)), 1,
                         [SourceRecord("in", 0, i, 0, {})])
        out.append((cut, sink.write(f"FILE_{i:03d}.csv", lambda body=body: iter([body[:7000], body[7000:]]))))
    return out


class Rig:
    """A sink with files, an outbox that has them queued, and a deliverer for ``destinations``."""

    def __init__(self, tmp_path: Path, destinations: list[dict], files: int = 3, recovered: bool = False) -> None:
        (tmp_path / "sink").mkdir(parents=True)
        self.sink = LocalSink(tmp_path / "sink", manifest=False)
        self.publisher = CollectingPublisher()
        self.store = MemoryOutboxStore()
        names = [d["name"] for d in destinations]
        self.outbox = Outbox(self.store, names, self.publisher, Journal("w1", "app"))
        for cut, result in written_files(self.sink, files):
            self.outbox.queue(cut, result, OWNER, 0)
        self.outbox.persist()
        if recovered:  # as a new process finds them: queued by an earlier one
            self.outbox.queued_here.clear()
        self.metrics = Metrics()
        self.deliverer = Deliverer(self.outbox, [SftpDestinationSettings(**d) for d in destinations], "w1",
                                   self.sink, lambda: {OWNER}, self.metrics)

    async def work(self, until, timeout_s: float = 20.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not until():
            assert time.monotonic() < deadline, f"timed out; events: {[e['event_type'] for e in self.publisher.events]}"
            self.deliverer.step(0)
            await asyncio.sleep(0.05)
            self.outbox.persist()  # the committer's step 3

    def events(self, kind: str) -> list[dict]:
        return self.publisher.of_type(kind)

    def metric(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, labels) or 0.0


def test_files_arrive_byte_identical_and_leave_the_outbox(tmp_path, sshd):
    rig = Rig(tmp_path, [sshd.destination(remoteName="{stem}_{window}{ext}")])

    async def run() -> None:
        await rig.work(lambda: not rig.store.data)
        await rig.deliverer.close()

    asyncio.run(run())
    delivered = rig.events("delivered")
    assert len(delivered) == 3 and len(rig.events("delivery-queued")) == 3
    for event in delivered:
        local = (rig.sink.target_dir / event["file_name"]).read_bytes()
        remote = Path(event["remote_path"])
        window = time.strftime("%Y%m%d%H%M", time.gmtime(event["window_start"] / 1000))
        assert remote.name == event["file_name"].replace(".csv", f"_{window}.csv")
        assert remote.read_bytes() == local and event["sha256"] == hashlib.sha256(local).hexdigest()
        assert event["bytes"] == len(local) and event["attempt"] == 1 and event["destination"] == "bank"
        assert event["server_fingerprint"].startswith("SHA256:")
    assert sorted(p.name for p in sshd.remote_dir.iterdir()) == sorted(Path(e["remote_path"]).name for e in delivered)
    assert rig.metric("stream_app_deliveries_total", destination="bank", outcome="delivered") == 3


def test_a_server_down_backs_off_then_delivers_when_it_is_back(tmp_path):
    server = Sshd(tmp_path / "sshd")  # not started
    rig = Rig(tmp_path, [server.destination()], files=2)

    async def run() -> None:
        await rig.work(lambda: rig.events("delivery-failed"))
        failed = rig.events("delivery-failed")[0]
        assert failed["error_class"] == "CONNECT" and failed["terminal"] is False
        assert rig.deliverer.halted() == {}
        rig.deliverer.step(0)
        assert rig.metric("stream_app_deliveries_pending", destination="bank") == 2
        server.start()
        try:
            await rig.work(lambda: not rig.store.data)
        finally:
            await rig.deliverer.close()
            server.stop()

    asyncio.run(run())
    attempts = {e["file_name"]: e["attempt"] for e in rig.events("delivered")}
    assert len(attempts) == 2 and max(attempts.values()) >= 2  # the count of a failed attempt is kept


def test_a_changed_host_key_is_terminal_and_halts_only_that_destination(tmp_path, sshd):
    impostor = keygen(tmp_path / "other_host_key").with_suffix(".pub").read_text().split()
    wrong = tmp_path / "known_hosts_wrong"
    wrong.write_text(f"[127.0.0.1]:{sshd.port} {impostor[0]} {impostor[1]}\n")
    rig = Rig(tmp_path, [sshd.destination("pinned-wrong", knownHostsFile=str(wrong)),
                         sshd.destination("good", remoteDir=str(sshd.remote_dir))], files=2)

    async def run() -> None:
        await rig.work(lambda: len(rig.events("delivered")) == 2 and rig.events("delivery-failed"))
        for _ in range(10):  # halted: nothing more is tried, and it is reported once
            rig.deliverer.step(0)
            await asyncio.sleep(0.05)
        await rig.deliverer.close()

    asyncio.run(run())
    failed = rig.events("delivery-failed")
    assert [(e["destination"], e["error_class"], e["terminal"]) for e in failed] == [("pinned-wrong", "HOST_KEY", True)]
    assert "pinned-wrong" in rig.deliverer.halted()
    assert rig.metric("stream_app_delivery_halted", destination="pinned-wrong") == 1
    assert rig.metric("stream_app_delivery_halted", destination="good") == 0
    assert len(rig.store.data) == 2  # still pending for the halted destination, never lost


def test_an_unknown_user_key_is_terminal(tmp_path, sshd):
    stranger = keygen(tmp_path / "stranger")
    rig = Rig(tmp_path, [sshd.destination(privateKeyFile=str(stranger))], files=1)

    async def run() -> None:
        await rig.work(lambda: rig.events("delivery-failed"))
        await rig.deliverer.close()

    asyncio.run(run())
    assert [(e["error_class"], e["terminal"]) for e in rig.events("delivery-failed")] == [("AUTH", True)]


def test_a_permission_error_is_terminal(tmp_path):
    server = Sshd(tmp_path / "sshd", sftp_flags="-R").start()  # a read-only SFTP server
    rig = Rig(tmp_path, [server.destination()], files=1)

    async def run() -> None:
        await rig.work(lambda: rig.events("delivery-failed"))
        await rig.deliverer.close()

    try:
        asyncio.run(run())
    finally:
        server.stop()
    assert [(e["error_class"], e["terminal"]) for e in rig.events("delivery-failed")] == [("PERMISSION", True)]
    assert list(server.remote_dir.iterdir()) == []


def test_a_different_file_under_the_name_is_a_conflict_never_overwritten(tmp_path, sshd):
    (sshd.remote_dir / "FILE_001.csv").write_bytes(b"someone else's file\n")
    rig = Rig(tmp_path, [sshd.destination()], files=3)

    async def run() -> None:
        await rig.work(lambda: rig.events("delivery-failed"))
        await asyncio.sleep(0.3)
        await rig.deliverer.close()

    asyncio.run(run())
    conflict = [e for e in rig.events("delivery-failed") if e["error_class"] == "CONFLICT"]
    assert len(conflict) == 1 and conflict[0]["terminal"] and conflict[0]["file_name"] == "FILE_001.csv"
    assert (sshd.remote_dir / "FILE_001.csv").read_bytes() == b"someone else's file\n"
    assert not any(p.name.endswith(".part") for p in sshd.remote_dir.iterdir())


def test_the_same_file_already_there_is_done_and_a_leftover_upload_is_cleared(tmp_path, sshd):
    rig = Rig(tmp_path, [sshd.destination()], files=1)
    local = (rig.sink.target_dir / "FILE_000.csv").read_bytes()
    (sshd.remote_dir / "FILE_000.csv").write_bytes(local)
    rig2 = Rig(tmp_path / "second", [sshd.destination()], files=2, recovered=True)
    (sshd.remote_dir / ".FILE_001.csv.crashed-replica.part").write_bytes(b"half")

    async def run() -> None:
        await rig.work(lambda: not rig.store.data)
        await rig2.work(lambda: not rig2.store.data)
        await rig.deliverer.close()
        await rig2.deliverer.close()

    asyncio.run(run())
    assert rig.events("delivered")[0]["file_name"] == "FILE_000.csv"
    assert rig.metric("stream_app_deliveries_total", destination="bank", outcome="already_there") == 1
    assert sorted(p.name for p in sshd.remote_dir.iterdir()) == ["FILE_000.csv", "FILE_001.csv"]


def test_two_uploaders_of_one_file_at_once_leave_one_complete_file(tmp_path, sshd):
    """Two replicas (a partition that moved mid-upload) upload the same file at the same moment:
    each writes its own temporary name, the plain rename lets one win, the other finds the same
    bytes in place."""
    (tmp_path / "sink").mkdir()
    sink = LocalSink(tmp_path / "sink", manifest=False)
    (cut, result), = written_files(sink, 1, size=2_000_000)
    d = Delivery("bank", result.name, result.location, result.bytes, result.sha256, cut.key.id, 1, 0, 1, OWNER, 0)
    settings = SftpDestinationSettings(**sshd.destination())

    async def read():
        with open(result.location, "rb") as f:
            while chunk := f.read(100_000):
                yield chunk
                await asyncio.sleep(0)

    async def run() -> list:
        one, two = SftpDestination(settings, "replica-a"), SftpDestination(settings, "replica-b")
        receipts = await asyncio.gather(one.deliver(d, read), two.deliver(d, read))
        await one.close()
        await two.close()
        return receipts

    receipts = asyncio.run(run())
    assert sorted(r.already_there for r in receipts) == [False, True]
    assert [p.name for p in sshd.remote_dir.iterdir()] == [result.name]
    assert (sshd.remote_dir / result.name).read_bytes() == Path(result.location).read_bytes()


def test_a_sink_copy_this_worker_cannot_read_waits_without_holding_the_others(tmp_path, sshd):
    """A local sink on another replica's volume (after a rebalance): that file stays pending
    with its own back-off; the destination is not halted and the other files arrive."""
    rig = Rig(tmp_path, [sshd.destination()], files=3)
    (rig.sink.target_dir / "FILE_001.csv").unlink()

    async def run() -> None:
        await rig.work(lambda: len(rig.events("delivered")) == 2 and rig.events("delivery-failed"))
        await rig.deliverer.close()

    asyncio.run(run())
    assert {e["error_class"] for e in rig.events("delivery-failed")} == {"SINK_ENOENT"}
    assert rig.deliverer.halted() == {} and [Delivery.from_json(v).name for v in rig.store.data.values()] == ["FILE_001.csv"]
    assert sorted(p.name for p in sshd.remote_dir.iterdir()) == ["FILE_000.csv", "FILE_002.csv"]  # no empty upload


def test_preflight_names_a_key_or_known_hosts_the_worker_could_not_use(tmp_path):
    from stream_app.delivery.sftp import check_credentials

    server = Sshd(tmp_path / "sshd")  # never started: only its files are read
    assert check_credentials(SftpDestinationSettings(**server.destination())) is None
    garbage = tmp_path / "garbage"
    garbage.write_text("not a key\n")
    other_host = tmp_path / "other_known_hosts"
    other_host.write_text(server.known_hosts.read_text().replace("127.0.0.1", "10.9.9.9"))
    cases = [({"privateKeyFile": str(tmp_path / "missing")}, "privateKeyFile", "cannot read"),
             ({"privateKeyFile": str(garbage)}, "privateKeyFile", "not a usable private key"),
             ({"knownHostsFile": str(tmp_path / "missing")}, "knownHostsFile", "cannot read"),
             ({"knownHostsFile": str(other_host)}, "knownHostsFile", "pins no key for [127.0.0.1]"),
             ({"passphraseEnv": "STREAM_APP_NO_SUCH_VARIABLE"}, "passphraseEnv", "is not set")]
    for overrides, key, says in cases:
        problem = check_credentials(SftpDestinationSettings(**server.destination(**overrides)))
        assert problem is not None and problem[0] == key and says in problem[1], (overrides, problem)
    from stream_app.config import ConfigError, parse_config
    from stream_app.tools.preflight import run_preflight
    from tests.helpers import config_dict

    (tmp_path / "out").mkdir()
    data = config_dict(tmp_path / "out")
    data["delivery"] = {"sftp": [server.destination(privateKeyFile=str(garbage))]}
    with pytest.raises(ConfigError, match=r"delivery.sftp.0.privateKeyFile: .*garbage is not a usable private key"):
        run_preflight(parse_config(data))
    data["delivery"] = {"sftp": [server.destination()]}
    assert "SFTP keys and pinned host keys load" in run_preflight(parse_config(data))
