"""Business files end to end on a real broker: routing stage -> repartition topic -> file stage.

Four input partitions with windows interleaved across them; one file per file window across
all partitions, byte-identical to both stages run in one process (what replay does), with two
workers, a rebalance while files are written, and SIGKILL in either stage.
"""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

import pytest

from stream_app.config import parse_config
from stream_app.replay.cli import ReplayRequest, run_replay
from tests.harness import LiveWorker, avro_values, wait_for

pytestmark = pytest.mark.e2e
H = 3_600_000
WINDOW_SCOPE = {
    "fileScope": "window",
    "fileNameTemplate": "B_{{ window_start | ts('%Y%m%dT%H%M') }}_{{ '%03d' % part }}.txt",
}
# Failpoints of the routing and the file stage, between each pair of durable steps.
FAILPOINTS = ["routing.after-send=crash@3", "routing.before-checkpoint=crash@5", "sink.before-rename=crash@2",
              "pipeline.after-write=crash@3", "live.before-facts=crash@1", "pipeline.after-checkpoint=crash@3",
              "live.after-commit=crash@4"]


def business_worker(bootstrap: str, tmp_path: Path, **worker) -> LiveWorker:
    settings = {**WINDOW_SCOPE, "maxRecordsPerFile": 1500,
                "window": {"sizeMs": H, "graceMs": 10 * 60_000, "idleTimeoutMs": 5000}, **worker}
    return LiveWorker(bootstrap, tmp_path, partitions=4, **settings)


def interleaved(records: int, seed: int, span_hours: float) -> list[tuple[int, bytes]]:
    """Each record to a random partition: every window has records of every partition."""
    rng = random.Random(seed)
    return [(rng.randrange(4), v) for v in avro_values(records, seed=seed, span_hours=span_hours)]


def _all_files(workers: list[LiveWorker], expected: dict[str, bytes]) -> bool:
    names: set[str] = set()
    for w in workers:
        names |= set(w.files())
    return names >= set(expected)


@pytest.mark.both_brokers
def test_two_workers_write_each_business_file_once_identical_to_replay(kafka_bootstrap, tmp_path):
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    first = business_worker(kafka_bootstrap, tmp_path / "a")
    second = first.replica(tmp_path / "b")
    first.produce(interleaved(16_000, seed=5, span_hours=6))
    reference = first.reference_files(tmp_path)
    assert len(reference) >= 10  # several windows, several parts each
    first.start(env={"STREAM_APP_FAILPOINTS": "sink.write=delay@1000"})  # slow writes: the rebalance meets one
    try:
        first.wait_for(lambda: len(first.files()) >= 2, 120, what="the first business files")
        second.start()
        first.wait_for(lambda: _all_files([first, second], reference), 300, interval_s=1, what="every file")
        time.sleep(3)  # a file written twice would show up now
        assert first.proc.poll() is None and second.proc.poll() is None
    finally:
        first.stop()
        second.stop()
    a, b = first.files(), second.files()
    assert a and b, "the second worker took repartition partitions over"
    assert not set(a) & set(b), f"written by both workers: {sorted(set(a) & set(b))}"
    first.assert_reference_files(tmp_path, reference, files={**a, **b})
    for worker in (first, second):
        assert "Traceback" not in worker.log.read_text()
    # one created event per file; a window's parts together hold offsets of all four partitions
    created = {e["file_name"]: e for e in first.created()}
    assert set(created) == set(reference)
    by_window: dict[int, set[int]] = {}
    for event in created.values():
        by_window.setdefault(event["window_start"], set()).update(o["partition"] for o in event["offsets"])
    assert all(partitions == {0, 1, 2, 3} for partitions in by_window.values())
    # replay reads the input topics (not the repartition topic) and gives the same bytes
    settings = parse_config(first.config_data)
    report = run_replay(settings, ReplayRequest(out_dir=tmp_path / "replayed"))
    replayed = {p.name: p.read_bytes() for p in (tmp_path / "replayed").iterdir() if p.name != "manifest.jsonl"}
    assert replayed == reference and sorted(report.files) == sorted(reference)


@pytest.mark.both_brokers
def test_sigkill_in_either_stage_leaves_exactly_the_reference_files(kafka_bootstrap, tmp_path):
    seed = int(os.environ.get("CRASH_SEED", random.randrange(1 << 30)))
    print(f"crash test seed: {seed} (set CRASH_SEED to repeat)")
    rng = random.Random(seed)
    worker = business_worker(kafka_bootstrap, tmp_path, streamingAppendEnabled=True, spool_dir=tmp_path / "spool")
    worker.produce(interleaved(30_000, seed=seed % 1000, span_hours=8))
    reference = worker.reference_files(tmp_path)
    try:
        for point in FAILPOINTS:
            worker.die_at(point)
        for _ in range(4):
            ready_before = worker.log_count("Worker ready")
            worker.start()
            worker.wait_for(lambda before=ready_before: worker.log_count("Worker ready") > before, 90,
                            what="worker ready")
            time.sleep(rng.uniform(0.0, 4.0))
            if worker.proc.poll() is None:
                os.killpg(worker.proc.pid, signal.SIGKILL)
                worker.proc.wait()
        worker.start()
        worker.wait_for(lambda: set(worker.files()) >= set(reference), 300, interval_s=1, what="every file")
    finally:
        worker.stop()
    worker.assert_reference_files(tmp_path, reference)
    assert not list(worker.out.glob("*.tmp"))
    ids: dict[str, set] = {}
    for event in worker.created():
        ids.setdefault(event["file_name"], set()).add(event["event_id"])
    assert all(len(v) == 1 for v in ids.values()) and set(ids) == set(reference)


def test_lost_repartition_records_are_routed_again_without_a_restart(kafka_bootstrap, tmp_path):
    """The repartition producer fails part-way (as after a fatal error, nothing after the failure
    reaches the topic): the worker does not exit; the routing stage rewinds to its persisted
    checkpoints and routes again through a new producer, and the files equal the reference."""
    worker = business_worker(kafka_bootstrap, tmp_path)
    worker.produce(interleaved(6_000, seed=11, span_hours=4))
    reference = worker.reference_files(tmp_path)
    worker.start(env={"STREAM_APP_FAILPOINTS": "repartition.send=EIO@25"})
    try:
        worker.wait_for(lambda: set(worker.files()) >= set(reference), 180, interval_s=1, what="every file")
        time.sleep(2)
        assert worker.proc.poll() is None
    finally:
        worker.stop()
    worker.assert_reference_files(tmp_path, reference)
    assert worker.log_count("routing again from the persisted checkpoints") == 1
    assert "Traceback" not in worker.log.read_text()


def test_a_slow_partition_holds_only_the_windows_it_has_not_closed(kafka_bootstrap, tmp_path):
    """Partition 3 stops after hour 2 while the others go on to hour 6: the windows it closed are
    written at once, the rest wait for it, and its idle close releases them."""
    worker = business_worker(kafka_bootstrap, tmp_path, window={"sizeMs": H, "graceMs": 0, "idleTimeoutMs": 15_000})
    values = avro_values(6000, seed=11, span_hours=6)
    early = values[:2000]  # about the first two hours
    worker.produce([(i % 4, v) for i, v in enumerate(early)])
    worker.produce([(i % 3, v) for i, v in enumerate(values[2000:])])  # partition 3 stays behind
    reference = worker.reference_files(tmp_path)
    worker.start()
    started = time.monotonic()
    try:
        worker.wait_for(lambda: any("T0000" in n for n in worker.files()), 60, what="the first window's file")
        first_files = time.monotonic() - started
        written = set(worker.files())
        assert written and all(n.startswith(("B_20260302T0000", "B_20260302T0100")) for n in written), written
        worker.wait_for(lambda: set(worker.files()) >= set(reference), 120, what="every file after the idle close")
    finally:
        worker.stop()
    worker.assert_reference_files(tmp_path, reference)
    assert first_files < 15, "early windows did not wait for the idle timeout"


def test_an_empty_partition_does_not_hold_a_window_forever(kafka_bootstrap, tmp_path):
    import urllib.request

    worker = business_worker(kafka_bootstrap, tmp_path, window={"sizeMs": H, "graceMs": 0, "idleTimeoutMs": 3000})
    worker.enable_web()
    worker.produce([(i % 2, v) for i, v in enumerate(avro_values(500, seed=3, span_hours=2))])  # 2, 3 stay empty
    reference = worker.reference_files(tmp_path)
    worker.start()
    try:
        worker.wait_for(lambda: set(worker.files()) >= set(reference), 90, what="files despite empty partitions")
        wait_for(lambda: sum(max(o, 0) for o in worker.committed().values()) == 500, 30, what="input committed")
        time.sleep(1)  # a timer tick updates the gauges
        with urllib.request.urlopen(f"http://127.0.0.1:{worker.web_port}/metrics", timeout=5) as resp:
            metrics = resp.read().decode()
        assert worker.readiness()[0] == 200
    finally:
        worker.stop()
    worker.assert_reference_files(tmp_path, reference)
    # routing lag (input partitions) and file lag (repartition partitions) are reported apart
    assert f'stream_app_consumer_lag{{partition="2",stage="routing",topic="{worker.topic}"}} 0.0' in metrics
    assert f'stage="files",topic="{worker.app_id}-files-repartition"' in metrics


def test_two_workers_share_one_bucket_and_write_each_business_file_once(kafka_bootstrap, tmp_path, monkeypatch):
    from tests.helpers import AWS_ENV, moto_bucket, s3_sink, write_config

    with moto_bucket(monkeypatch) as (url, s3):
        (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
        first = business_worker(kafka_bootstrap, tmp_path / "a")
        reference_source = first.config_data["sink"]
        first.config_data["sink"] = s3_sink(url)
        write_config(first.config_path, first.config_data)
        second = first.replica(tmp_path / "b")
        second.config_data["sink"] = dict(first.config_data["sink"])
        write_config(second.config_path, second.config_data)
        first.produce(interleaved(8000, seed=6, span_hours=6))
        local = dict(first.config_data)
        first.config_data = {**local, "sink": reference_source}
        reference = first.reference_files(tmp_path)
        first.config_data = local

        def stored() -> dict[str, bytes]:
            listing = s3.list_objects_v2(Bucket="clearing", Prefix="out/").get("Contents", [])
            return {o["Key"].removeprefix("out/"): s3.get_object(Bucket="clearing", Key=o["Key"])["Body"].read()
                    for o in listing if not o["Key"].startswith("out/manifests/")}

        # slow writes (7 files): the second worker joins while they are written
        first.start(env={**AWS_ENV, "STREAM_APP_FAILPOINTS": "sink.write=delay@2000"})
        try:
            first.wait_for(lambda: len(stored()) >= 2, 120, what="the first objects")
            second.start(env=AWS_ENV)
            first.wait_for(lambda: set(stored()) >= set(reference), 300, interval_s=1, what="every object")
            time.sleep(3)
        finally:
            first.stop()
            second.stop()
        assert stored() == reference
        journal = first.journal()
        # no FILE_CONFLICT, no retry; a write whose ownership check failed in the rebalance is
        # journaled (PARTITION_REVOKED) and put nothing in the bucket
        assert not [e for e in journal if e["event_type"] == "write-failed" and e["error_class"] != "PARTITION_REVOKED"]
        created: dict[str, set] = {}
        for event in journal:
            if event["event_type"] == "created":
                created.setdefault(event["file_name"], set()).add(event["worker_id"])
        assert set(created) == set(reference)
        assert {w for workers in created.values() for w in workers} == {first.config_data["workerId"],
                                                                          second.config_data["workerId"]}


@pytest.mark.both_brokers
def test_scaling_one_three_two_one_replicas_while_files_are_written(kafka_bootstrap, tmp_path):
    """1 -> 3 -> 2 (one replica SIGKILLed) -> 1 (one stopped) while slow files are written: no
    replica exits on a rebalance (the idle close, lag and watchdog read only partitions owned at
    that moment), a replica that keeps a partition committed at 0 reads it again from its start
    (no window loses its first records), only the killed replica's files may stand twice, and
    the union of all volumes is byte-identical to one worker (the pure core) and to replay."""
    dirs = [tmp_path / name for name in ("a", "b", "c")]
    for path in dirs:
        path.mkdir()
    first = business_worker(kafka_bootstrap, dirs[0], maxRecordsPerFile=800)
    workers = [first, first.replica(dirs[1]), first.replica(dirs[2])]
    first.produce(interleaved(16_000, seed=21, span_hours=6))
    reference = first.reference_files(tmp_path)
    slow = {"STREAM_APP_FAILPOINTS": "sink.write=delay@300"}

    def union() -> dict[str, bytes]:
        merged: dict[str, bytes] = {}
        for worker in workers:
            merged.update(worker.files())
        return merged

    def progress(more: int) -> None:
        target = len(union()) + more
        try:
            first.wait_for(lambda: len(union()) >= target or set(union()) >= set(reference), 180, interval_s=0.5,
                           what=f"{more} more files")
        except AssertionError as exc:  # what every replica was doing, and which files are missing
            others = [f"--- replica {i}: {worker.diagnosis()}" for i, worker in enumerate(workers) if i and worker.proc]
            missing = sorted(set(reference) - set(union()))
            raise AssertionError("\n".join([str(exc), *others, f"missing ({len(missing)}): {missing[:20]}"])) from None

    def alive(*replicas: LiveWorker) -> None:
        for worker in replicas:
            assert worker.proc.poll() is None, f"a replica exited on a rebalance:\n{worker.diagnosis()}"

    try:
        first.start(env=slow)
        progress(3)
        workers[1].start(env=slow)
        workers[2].start(env=slow)
        for worker in workers[1:]:
            worker.wait_for(lambda w=worker: w.log_count("Worker ready") >= 1, 90, what="worker ready")
        progress(4)
        alive(*workers)
        workers[2].kill()  # 3 -> 2, as a lost node
        progress(4)
        alive(first, workers[1])
        assert workers[1].stop() == 0  # 2 -> 1, as a scale-down
        first.wait_for(lambda: set(union()) >= set(reference), 300, interval_s=1, what="every file")
        time.sleep(3)  # a file written twice would show up now
        alive(first)
    finally:
        for worker in workers:
            worker.stop()
    volumes = [w.files() for w in workers]
    for name in set(volumes[0]) & set(volumes[1]):  # gracefully handed over: never written twice
        raise AssertionError(f"{name} written by two replicas that were never killed")
    for volume in volumes:
        assert all(reference.get(name) == body for name, body in volume.items()), "a copy differs"
    first.assert_reference_files(tmp_path, reference, files=union())
    for worker in workers:
        log = worker.log.read_text()
        assert "Traceback" not in log and "Partition is not assigned" not in log
    settings = parse_config(first.config_data)
    run_replay(settings, ReplayRequest(out_dir=tmp_path / "replayed"))
    replayed = {p.name: p.read_bytes() for p in (tmp_path / "replayed").iterdir() if p.name != "manifest.jsonl"}
    assert replayed == reference


def test_a_record_of_exactly_max_record_bytes_is_routed_and_one_byte_more_is_a_dead_letter(kafka_bootstrap, tmp_path):
    """Window scope, JSON, the default input.maxRecordBytes (1 MiB): a record of exactly that
    size goes through the repartition topic into its file (the producer and the topic are sized
    for it); one byte more is an OVERSIZED_RECORD dead letter; good records before and after them
    on the same and another partition are written, and every partition commits to its end."""
    import orjson

    limit = 1_048_576
    worker = LiveWorker(kafka_bootstrap, tmp_path, partitions=2, input_format="json", topic_config={
        "max.message.bytes": str(4 * limit)}, **{**WINDOW_SCOPE, "maxRecordsPerFile": 100},
        window={"sizeMs": H, "graceMs": 0, "idleTimeoutMs": 2000})

    def record(rid: str, minute: int, size: int | None = None) -> bytes:
        value = {"record_id": rid, "matched_at": f"2026-03-02T01:{minute:02d}:00Z", "amount": "1.00", "currency": "EUR"}
        if size is None:
            return orjson.dumps(value)
        value["pad"] = ""
        value["pad"] = "x" * (size - len(orjson.dumps(value)))
        payload = orjson.dumps(value)
        assert len(payload) == size
        return payload

    values = [(0, record("a1", 1)), (0, record("big", 2, limit)), (1, record("b1", 3)),
              (1, record("huge", 4, limit + 1)), (0, record("a2", 5)), (1, record("b2", 6))]
    worker.produce(values)
    worker.start()
    try:
        dead = worker.dead_letters(expect=1)
        worker.wait_for(lambda: worker.committed() == {0: 3, 1: 3}, 120, what="both partitions committed to their end")
        worker.wait_for(lambda: worker.files(), 60, what="the file")
    finally:
        worker.stop()
    assert [(d["source_partition"], d["source_offset"], d["reason"]) for d in dead] == [(1, 1, "OVERSIZED_RECORD")]
    (body,) = worker.files().values()
    ids = [line.split(b"|")[2] for line in body.splitlines() if line.startswith(b"D|")]
    assert ids == [b"a1", b"big", b"b1", b"a2", b"b2"]
    log = worker.log.read_text()
    assert "routing again" not in log and "Traceback" not in log


def test_a_backlog_larger_than_the_buffer_gives_the_files_of_the_records_alone(kafka_bootstrap, tmp_path):
    """20,000 records over 4 partitions and 5 one-hour windows of ~4,000 records each, caught up
    as a backlog with maxBufferedRecords 2000: the worker moves open windows to disk instead of
    cutting them early, so the files equal the pure core's (which never meets pressure), with
    no 'pressure' cut, and replay --verify passes on them."""
    from click.testing import CliRunner

    from stream_app.cli import main

    worker = business_worker(kafka_bootstrap, tmp_path, maxRecordsPerFile=1000, maxBufferedRecords=2000,
                             spool_dir=tmp_path / "spool")
    worker.produce(interleaved(20_000, seed=17, span_hours=5))
    reference = worker.reference_files(tmp_path)
    worker.start()
    try:
        worker.wait_for(lambda: set(worker.files()) >= set(reference), 300, interval_s=1, what="every file")
        peak_mb = next(int(line.split()[1]) / 1024 for line in open(f"/proc/{worker.proc.pid}/status")
                       if line.startswith("VmHWM:"))
    finally:
        worker.stop()
    assert peak_mb < 400, f"peak RSS {peak_mb:.0f} MB"
    worker.assert_reference_files(tmp_path, reference)
    created = worker.created()
    assert created and "pressure" not in {e["reason"] for e in created}
    assert (tmp_path / "spool" / "pressure~spill").is_dir(), "the backlog never met the buffer limit"
    result = CliRunner().invoke(main, ["replay", "--config", str(worker.config_path), "--verify"])
    assert result.exit_code == 0, result.output


def test_the_repartition_topic_is_sized_for_the_largest_accepted_record(kafka_bootstrap, tmp_path):
    """Created with max.message.bytes for input.maxRecordBytes; an existing topic that takes
    less (created by an older version, or by hand) is raised at start, not found out by a send."""
    from confluent_kafka.admin import AdminClient, ConfigResource

    from stream_app.codecs.repartition import repartition_message_bytes
    from stream_app.live.repartition import ensure_repartition_topic
    from stream_app.tools.broker import create_topics

    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})

    def limit(topic: str) -> int:
        resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
        return int(admin.describe_configs([resource], request_timeout=10)[resource].result()["max.message.bytes"].value)

    for name in ("fresh", "old"):
        (tmp_path / name).mkdir()
    fresh = parse_config(business_worker(kafka_bootstrap, tmp_path / "fresh").config_data)
    ensure_repartition_topic(fresh)
    assert limit(fresh.repartition_topic) == repartition_message_bytes(1_048_576)
    data = business_worker(kafka_bootstrap, tmp_path / "old").config_data
    data["input"]["maxRecordBytes"] = 3_000_000
    old = parse_config(data)
    create_topics(kafka_bootstrap, {old.repartition_topic: old.kafka.repartition_partitions},
                  config={"max.message.bytes": "1000000"})
    ensure_repartition_topic(old)
    assert limit(old.repartition_topic) == repartition_message_bytes(3_000_000)


def _helper_processes(worker: LiveWorker, module: str) -> list[int]:
    """The worker's child processes that run ``module`` (its helpers are started with ``-m``)."""
    assert worker.proc is not None
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1]) == worker.proc.pid \
                    and module in (proc / "cmdline").read_bytes().decode(errors="replace"):
                found.append(int(proc.name))
        except (OSError, ValueError, IndexError):
            continue  # exited meanwhile
    return found


def test_structured_business_files_prepared_in_the_helper_are_the_reference_files(kafka_bootstrap, tmp_path):
    """Structured business files: routed batches are held a fetch while the prepare helper
    projects them and renders their lines; a worker killed mid-run writes, after its restart,
    exactly the files of the reference, whose rows were prepared in the test's own process."""
    worker = business_worker(kafka_bootstrap, tmp_path, mode="structured", schema={"id": "pcs-clearing", "version": "1.1.0"},
                             fileNameTemplate="B_{{ window_start | ts('%Y%m%dT%H%M') }}_{{ '%03d' % part }}.xml")
    worker.produce(interleaved(12_000, seed=6, span_hours=5))
    reference = worker.reference_files(tmp_path)  # routed runs prepared in the test process
    assert len(reference) >= 8 and all(body.startswith(b"<?xml") for body in reference.values())
    worker.start()
    try:
        worker.wait_for(lambda: worker.files(), 120, what="the first file")
        assert _helper_processes(worker, "stream_app.pipeline.prepare_process"), "the prepare helper runs"
        worker.kill()
        worker.start().wait_for(lambda: set(worker.files()) >= set(reference), 300, interval_s=1, what="every file")
    finally:
        worker.stop()
    worker.assert_reference_files(tmp_path, reference)
    log = worker.log.read_text()
    assert "Traceback" not in log and "prepare helper process failed" not in log
