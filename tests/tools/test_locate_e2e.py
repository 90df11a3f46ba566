"""``stream-app locate`` against a real worker's files, checked against a full scan of them.

A structured CSV worker (dead letters on) writes full parts of five records; the last part of
each partition stays open.  For a random sample of records, dead letters and open ones included,
the command's answer is compared with what reading every file gives: the file whose line holds
the record's id, and that line's number.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest

from stream_app.codecs.avro import encode_confluent
from stream_app.tools.demo import matched_records
from tests.harness import SCHEMA, LiveWorker, wait_for

pytestmark = pytest.mark.e2e
H = 3_600_000


def _locate(worker: LiveWorker, *args: str) -> list[dict]:
    done = subprocess.run([sys.executable, "-m", "stream_app.cli", "locate", "--config", str(worker.config_path),
                           "--json", *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_locate_finds_every_sampled_record_where_a_full_scan_of_the_files_does(kafka_bootstrap, tmp_path):
    records = list(matched_records(25, seed=5, span_hours=0.5))
    bad = {3, 11, 17}  # onInvalidRecord: deadLetter
    for index in bad:
        records[index] = {**records[index], "scheme": "AMEX"}
    worker = LiveWorker(kafka_bootstrap, tmp_path, partitions=2, mode="structured",
                        schema={"id": "settlement-report", "version": "1.0.0"},
                        fileNameTemplate="SR_{{ partition }}_{{ part }}_{{ window_start | ts('%Y%m%d%H') }}.csv",
                        maxRecordsPerFile=5, window={"sizeMs": 24 * H, "graceMs": 100 * H, "idleTimeoutMs": 600_000})
    produced_at = datetime.now(UTC)
    worker.produce([encode_confluent(1, SCHEMA, r) for r in records])
    worker.start()
    try:
        worker.dead_letters(expect=len(bad))
        # 13 good records on partition 0 and 9 on partition 1: three full parts of five are
        # written, seven records wait in the two open parts
        wait_for(lambda: len([n for n in worker.files() if n.endswith(".csv")]) >= 3 or None, 90,
                 what="the full parts")
    finally:
        worker.stop()
    files = {name: body.decode().split("\r\n") for name, body in worker.files().items() if name.endswith(".csv")}
    scan: dict[tuple[str, int, int], dict] = {}
    for raw, record in zip(worker.produced, records):
        coordinates = (raw.topic, raw.partition, raw.offset)
        hits = [(name, number) for name, lines in files.items()
                for number, line in enumerate(lines, start=1) if record["record_id"] in line]
        if hits:
            ((name, line),) = hits
            scan[coordinates] = {"status": "in a file", "file": name, "line": line}
        elif worker.produced.index(raw) in bad:
            scan[coordinates] = {"status": "dead-lettered", "reason": "VALIDATION_FAILED"}
        else:
            scan[coordinates] = {"status": "open"}
    assert {s["status"] for s in scan.values()} == {"in a file", "dead-lettered", "open"}

    sample = random.Random(11).sample(sorted(scan), 12) + [c for c in scan if scan[c]["status"] == "dead-lettered"]
    answers = _locate(worker, *[f"--offset={t}:{p}:{o}" for t, p, o in sample])
    assert len(answers) == len(sample)
    for coordinates, answer in zip(sample, answers):
        expected = scan[coordinates]
        assert answer["record"] == "{}/{}@{}".format(*coordinates)
        if expected["status"] == "in a file":
            assert (answer["status"], answer["file"], answer["line"]) == ("in a file", expected["file"],
                                                                          expected["line"]), answer
            assert answer["location"] == str(worker.out / expected["file"]) and answer["position"] == \
                expected["line"] - 1  # the column row first
            assert answer["window_start"].endswith("Z") and answer["delivery"] == "none configured"
        elif expected["status"] == "dead-lettered":
            assert answer["status"] == "dead-lettered" and answer["reason"] == "VALIDATION_FAILED", answer
            assert answer["detail"] == "field 'scheme' violates rule enum"
        else:
            assert answer["status"].startswith("in no file yet"), answer

    # by a field's value, reading only a time range of the input (Kafka timestamps)
    target = next(c for c in sample if scan[c]["status"] == "in a file")
    record_id = records[[(r.topic, r.partition, r.offset) for r in worker.produced].index(target)]["record_id"]
    span = [f"--from-time={(produced_at - timedelta(minutes=1)).isoformat()}",
            f"--to-time={(datetime.now(UTC) + timedelta(minutes=1)).isoformat()}"]
    (by_key,) = _locate(worker, f"--key=record_id={record_id}", *span)
    assert by_key == _locate(worker, "--offset={}:{}:{}".format(*target))[0]
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert _locate(worker, f"--key=record_id={record_id}", f"--from-time={later}",
                   f"--to-time={later}") == []  # outside the range: nothing read, nothing found
