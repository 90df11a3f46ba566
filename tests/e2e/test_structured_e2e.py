"""Structured mode through the live worker: onInvalidRecord fail and deadLetter on a real broker."""

from __future__ import annotations

import time

import pytest

from stream_app.codecs.avro import encode_confluent
from stream_app.tools.demo import matched_records
from tests.harness import SCHEMA, LiveWorker, wait_for

pytestmark = pytest.mark.e2e
H = 3_600_000
LONG_WINDOWS = {"sizeMs": H, "graceMs": 100 * H, "idleTimeoutMs": 600_000}


def _values(bad_index: int, count: int = 4, change: dict | None = None) -> list[bytes]:
    records = list(matched_records(count, seed=31, span_hours=0.2))
    records[bad_index] = {**records[bad_index], **(change or {"scheme": "AMEX"})}
    return [encode_confluent(1, SCHEMA, r) for r in records]


def test_fail_policy_halts_the_window_journals_and_reports_not_ready(kafka_bootstrap, tmp_path):
    worker = LiveWorker(kafka_bootstrap, tmp_path, mode="structured", schema={"id": "pcs-clearing", "version": "1.0.0"},
                        fileNameTemplate="PCS_{{ partition }}_{{ part }}_{{ window_start | ts('%Y%m%d%H') }}.xml",
                        maxRecordsPerFile=4, window=LONG_WINDOWS)
    worker.enable_web()
    worker.produce(_values(bad_index=2))
    worker.start()
    try:
        events = wait_for(lambda: [e for e in worker.journal() if e["event_type"] == "validation-failed"], 60,
                          what="a validation-failed event")
        status, body = wait_for(lambda: (lambda r: r if r[0] == 503 else None)(worker.readiness()), 30,
                                what="readiness to report the halt")
        time.sleep(1.5)  # several commit intervals (and retry intervals, were it retried)
        committed = worker.committed()[0]
        halted = [e for e in worker.journal() if e["event_type"] == "validation-failed"]
    finally:
        worker.stop()
    assert len(halted) == 1 and halted[0]["terminal"] is True  # reported once, not retried in a loop
    assert "ERROR" in worker.log.read_text() and "needs a fix and a restart" in worker.log.read_text()
    event = events[0]
    assert event["error_class"] == "VALIDATION_FAILED"
    assert "field 'Scheme' violates rule enum" in event["error_message"] and "AMEX" not in event["error_message"]
    assert [(o["partition"], o["first"], o["last"]) for o in event["offsets"]] == [(0, 2, 2)]
    assert "Scheme" in body["reason"] and body["ready"] is False
    assert worker.files() == {} and committed in (0, -1001)


def settlement_report_worker(bootstrap: str, tmp_path) -> LiveWorker:
    """The CSV pack with onInvalidRecord: deadLetter, three records to a file, one long window."""
    return LiveWorker(bootstrap, tmp_path, mode="structured", schema={"id": "settlement-report", "version": "1.0.0"},
                      fileNameTemplate="SR_{{ partition }}_{{ part }}_{{ window_start | ts('%Y%m%d%H') }}.csv",
                      maxRecordsPerFile=3, window=LONG_WINDOWS)


def one_dead_letter(kafka_bootstrap: str, tmp_path, values: list[bytes]) -> tuple[dict, bytes]:
    """The CSV pack's worker over four records of which one is bad: its dead letter and the file."""
    worker = settlement_report_worker(kafka_bootstrap, tmp_path)
    worker.produce(values)
    worker.start()
    try:
        (dead,) = worker.dead_letters(expect=1)
        wait_for(lambda: worker.committed()[0] == 4, 60, what="commit past the dead-lettered record")
    finally:
        worker.stop()
    (body,) = worker.files().values()
    return dead, body


def test_dead_letter_policy_writes_the_file_without_the_record(kafka_bootstrap, tmp_path):
    values = _values(bad_index=1)
    dead, body = one_dead_letter(kafka_bootstrap, tmp_path, values)
    assert dead["reason"] == "VALIDATION_FAILED" and dead["source_offset"] == 1
    assert dead["detail"] == "field 'scheme' violates rule enum" and dead["original_value"] == values[1]
    rows = body.decode().split("\r\n")
    good = [r for r in matched_records(4, seed=31, span_hours=0.2)]
    del good[1]
    assert len(rows) == 1 + 3 + 1 + 1  # column row, three records, total row, final line ending
    net = sum((-r["amount"] if r["transaction_type"] in ("REFUND", "REVERSAL") else r["amount"]) for r in good)
    assert rows[-2] == f"TOTAL,3,{net:.2f}" and good[0]["record_id"] in rows[1]


def test_a_control_character_in_a_csv_value_is_a_dead_letter_naming_the_field(kafka_bootstrap, tmp_path):
    # a line reader would see two records
    dead, body = one_dead_letter(kafka_bootstrap, tmp_path, _values(2, change={"merchant_name": "ZQ SHOP\r\nXY"}))
    assert dead["reason"] == "VALIDATION_FAILED" and dead["source_offset"] == 2
    assert dead["detail"].startswith("field 'merchant_name' violates rule controlChar") and "ZQ" not in dead["detail"]
    assert body.count(b"\r\n") == 1 + 3 + 1 and b"ZQ SHOP" not in body
