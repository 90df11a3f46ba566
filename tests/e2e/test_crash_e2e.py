"""Crash consistency: SIGKILL at random and at deliberate points, restart, compare with the core.

The worker processes 100,000 records across several windows and partitions in streaming mode and
is killed at least 10 times at random moments (seeded; the seed is printed), half while it starts
and joins the group and half while it processes, and once at each failpoint: mid-append, after
the .tmp is written before the rename, after the rename before anything is persisted, after the
checkpoint before the commit, after the commit.  Afterwards every record is in exactly one file,
no file exists twice, no .tmp or spool is left, and every file equals what the pure core makes of
the same records.
"""

from __future__ import annotations

import os
import random
import signal
import time

import pytest

from tests.harness import LiveWorker, avro_values, wait_for

pytestmark = pytest.mark.e2e
H = 3_600_000
RECORDS = 100_000
RANDOM_KILLS = 10
FAILPOINTS = ["pipeline.append=crash@20000", "sink.before-rename=crash@3", "pipeline.after-write=crash@3",
              "pipeline.after-checkpoint=crash@4", "live.after-commit=crash@2"]


def _done(worker: LiveWorker) -> bool:
    created = {e["event_id"]: e for e in worker.created()}
    return sum(e["records"] for e in created.values()) + len(worker.dead_letters()) >= RECORDS


def test_sigkill_anywhere_leaves_exactly_the_reference_files(kafka_bootstrap, tmp_path):
    seed = int(os.environ.get("CRASH_SEED", random.randrange(1 << 30)))
    print(f"crash test seed: {seed} (set CRASH_SEED to repeat)")
    rng = random.Random(seed)
    worker = LiveWorker(kafka_bootstrap, tmp_path, partitions=3, maxRecordsPerFile=2500, streamingAppendEnabled=True,
                        spool_dir=tmp_path / "spool", window={"sizeMs": H, "graceMs": 10 * 60_000, "idleTimeoutMs": 5000})
    worker.produce(avro_values(RECORDS, seed=seed % 1000, span_hours=12))
    kills = 0
    try:
        for point in FAILPOINTS:  # each deliberate point: the worker must die there by itself
            worker.die_at(point)
            kills += 1
        for i in range(RANDOM_KILLS):  # random moments: half while starting, half while processing
            ready_before = worker.log_count("Worker ready")
            worker.start()
            if i % 2:
                worker.wait_for(lambda before=ready_before: worker.log_count("Worker ready") > before, 90,
                                what="worker ready")
                time.sleep(rng.uniform(0.0, 4.0))
            else:
                time.sleep(rng.uniform(1.0, 6.0))
            if worker.proc.poll() is None:
                os.killpg(worker.proc.pid, signal.SIGKILL)
                worker.proc.wait()
                kills += 1
        worker.start()
        worker.wait_for(lambda: _done(worker), 300, interval_s=2, what="every record in a file")
        worker.wait_for(lambda: sum(worker.committed().values()) == RECORDS, 60, what="final commits")
    finally:
        worker.stop()
    assert kills >= RANDOM_KILLS + len(FAILPOINTS) - 1
    files = worker.files()
    worker.assert_reference_files(tmp_path)
    assert not list(worker.out.glob("*.tmp")) and not list((tmp_path / "spool").rglob("*.spool"))
    ids: dict[str, set] = {}
    for event in worker.created():
        ids.setdefault(event["file_name"], set()).add(event["event_id"])
    assert all(len(v) == 1 for v in ids.values()) and set(ids) == set(files)


def test_sigterm_stops_quickly_without_partial_files(kafka_bootstrap, tmp_path):
    worker = LiveWorker(kafka_bootstrap, tmp_path, partitions=2, maxRecordsPerFile=500,
                        window={"sizeMs": H, "graceMs": 10 * 60_000, "idleTimeoutMs": 5000})
    worker.produce(avro_values(20_000, seed=3, span_hours=6))
    worker.start()
    wait_for(lambda: len(worker.files()) >= 2, 60, what="work in progress")
    started = time.monotonic()
    os.killpg(worker.proc.pid, signal.SIGTERM)
    worker.proc.wait(timeout=15)
    assert time.monotonic() - started < 10
    assert not list(worker.out.glob("*.tmp"))
    in_files = {(o["partition"], off) for e in worker.created() for o in e["offsets"]
                for off in range(o["first"], o["last"] + 1)}
    for partition, offset in worker.committed().items():  # everything below a commit is in a file
        assert {(partition, off) for off in range(max(offset, 0))} <= in_files
    worker.start()
    try:
        wait_for(lambda: sum(worker.committed().values()) == 20_000, 120, what="completion after restart")
    finally:
        worker.stop()
    worker.assert_reference_files(tmp_path)
