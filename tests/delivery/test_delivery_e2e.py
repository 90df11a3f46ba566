"""SFTP delivery end to end: a worker on the embedded broker, a real sshd, the journal.

The commit never waits for the server; pending deliveries survive a stop, a kill in the middle
of an upload and a rebalance between two replicas (the outbox is recovered by the owner of the
partition); every delivered file is byte-identical to its sink copy."""

from __future__ import annotations

import json
import time
from decimal import Decimal

import pytest
from click.testing import CliRunner

from stream_app.cli import main
from tests.e2e.test_business_files_e2e import business_worker, interleaved
from tests.harness import LiveWorker, avro_values
from tests.helpers import AWS_ENV, moto_bucket, s3_sink, write_config
from tests.pipeline.test_file_limits import check_parts
from tests.sshd import Sshd, sshd_missing

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(sshd_missing() is not None, reason=str(sshd_missing()))]
H = 3_600_000


def with_delivery(worker: LiveWorker, server: Sshd, **destination: object) -> LiveWorker:
    worker.config_data["delivery"] = {"sftp": [server.destination(**destination)]}
    write_config(worker.config_path, worker.config_data)
    return worker


def delivered(worker: LiveWorker) -> dict[str, dict]:
    return {e["file_name"]: e for e in worker.journal() if e["event_type"] == "delivered"}


def remote_files(server: Sshd) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in server.remote_dir.iterdir()}


def test_files_wait_for_a_server_that_is_down_survive_a_kill_mid_upload_and_arrive_identical(embedded_kafka, tmp_path):
    server = Sshd(tmp_path / "sshd")  # down at first
    worker = with_delivery(LiveWorker(embedded_kafka, tmp_path, partitions=2, maxRecordsPerFile=10,
                                      window={"sizeMs": H, "graceMs": 0, "idleTimeoutMs": 1000}), server)
    worker.produce(avro_values(60, span_hours=2.5))
    worker.start()
    try:
        # the files are written and committed although no delivery can succeed
        worker.wait_for(lambda: sum(worker.committed().values()) == 60 and
                        any(e["event_type"] == "delivery-failed" for e in worker.journal()), 90,
                        what="files committed while the server is down")
    finally:
        worker.stop()
    files = worker.files()
    failed = [e for e in worker.journal() if e["event_type"] == "delivery-failed"]
    assert {(e["error_class"], e["terminal"]) for e in failed} == {("CONNECT", False)}
    assert not delivered(worker) and len(files) >= 6
    pending = cli(worker, "deliveries", "--status", "pending", "--json")
    assert sorted(json.loads(line)["file_name"] for line in pending.splitlines()) == sorted(files)
    assert "pending   bank" in cli(worker, "deliveries") and "last error CONNECT" in cli(worker, "deliveries")
    server.start()
    try:
        # the outbox was recovered from its changelog; the second upload's rename never happens
        worker.die_at("delivery.before-rename=crash@2")
        assert any(p.name.endswith(".part") for p in server.remote_dir.iterdir()), "killed mid-upload"
        worker.start()
        worker.wait_for(lambda: len(delivered(worker)) == len(files), 90, what="every file delivered")
        time.sleep(1)
    finally:
        worker.stop()
        server.stop()
    assert remote_files(server) == files  # byte-identical, no temporary file left, nothing else
    receipts = delivered(worker)
    for name, event in receipts.items():
        assert event["remote_path"] == str(server.remote_dir / name) and event["bytes"] == len(files[name])
        assert event["server_fingerprint"].startswith("SHA256:") and event["destination"] == "bank"
    assert max(e["attempt"] for e in receipts.values()) >= 2  # attempts while the server was down count
    assert len([e for e in worker.journal() if e["event_type"] == "delivery-queued"]) == len(files)
    assert "Traceback" not in worker.log.read_text()
    assert cli(worker, "deliveries", "--status", "pending", "--status", "failed") == ""
    # locate names the delivery; a re-delivery on request puts back a file the receiver lost,
    # finds one already there, and refuses to overwrite a different one
    name = sorted(files)[0]
    created = next(e for e in worker.created() if e["file_name"] == name)
    record = next(f"{worker.topic}:{o['partition']}:{o['first']}" for o in created["offsets"])
    assert f"delivery: bank: delivered to {server.remote_dir / name}" in cli(worker, "locate", "--offset", record)
    server.start()
    try:
        (server.remote_dir / name).unlink()
        assert f"{name} -> bank: delivered at" in cli(worker, "deliveries", "--redeliver", name)
        assert (server.remote_dir / name).read_bytes() == files[name]
        assert f"{name} -> bank: already there" in cli(worker, "deliveries", "--redeliver", name)
        (server.remote_dir / name).write_bytes(b"changed by someone\n")
        conflict = cli(worker, "deliveries", "--redeliver", name, code=65)
        assert "CONFLICT" in conflict and (server.remote_dir / name).read_bytes() == b"changed by someone\n"
    finally:
        server.stop()


def cli(worker: LiveWorker, *args: str, code: int = 0) -> str:
    result = CliRunner().invoke(main, [*args, "--config", str(worker.config_path)])
    assert result.exit_code == code, result.output
    return result.output


def test_two_replicas_sharing_a_bucket_deliver_what_their_partitions_have_pending(embedded_kafka, tmp_path,
                                                                                 monkeypatch):
    """Business files in S3 (the system of record both replicas read), cut by maxAmountPerFile as
    replay cuts them; uploads are slow, so the second replica takes over partitions whose
    deliveries are pending, recovers them from the outbox and delivers them from the bucket."""
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    server = Sshd(tmp_path / "sshd").start()
    with moto_bucket(monkeypatch) as (url, s3):
        first = with_delivery(business_worker(embedded_kafka, tmp_path / "a", maxRecordsPerFile=400,
                                              maxAmountPerFile="150000.00"), server, maxParallel=1)
        first.produce(interleaved(4000, seed=3, span_hours=4))
        reference = first.reference_files(tmp_path)
        assert len(reference) >= 10
        check_parts(reference, Decimal("150000.00"))  # every part within the limit, with its own totals
        second = first.replica(tmp_path / "b")
        for worker in (first, second):
            worker.config_data["sink"] = s3_sink(url)
            write_config(worker.config_path, worker.config_data)
        first.start(env={**AWS_ENV, "STREAM_APP_FAILPOINTS": "delivery.before-rename=delay@2000"})
        try:
            first.wait_for(lambda: len(delivered(first)) >= 1, 120, what="the first delivery")
            second.start(env=AWS_ENV)
            first.wait_for(lambda: set(delivered(first)) >= set(reference), 240, interval_s=1,
                           what="every file delivered")
            time.sleep(2)
            assert first.proc.poll() is None and second.proc.poll() is None
        finally:
            first.stop()
            second.stop()
            server.stop()
        stored = {o["Key"].removeprefix("out/"): s3.get_object(Bucket="clearing", Key=o["Key"])["Body"].read()
                  for o in s3.list_objects_v2(Bucket="clearing", Prefix="out/")["Contents"]
                  if not o["Key"].startswith("out/manifests/")}
    assert remote_files(server) == reference == stored
    journal = first.journal()
    workers = {e["worker_id"] for e in journal if e["event_type"] == "delivered"}
    assert len(workers) == 2, f"the second replica delivered what its partitions had pending: {workers}"
    assert [e for e in journal if e["event_type"] == "delivery-failed"] == []
    assert "amount" in {e["reason"] for e in journal if e["event_type"] == "created"}
