"""Dead-letter envelopes: ids per app and source record; envelopes of 0.1.0 still read."""

from __future__ import annotations

from stream_app.codecs.avro import encode_confluent
from stream_app.codecs.event_schemas import DEAD_LETTER_SCHEMA_V1
from stream_app.core.records import RawRecord
from stream_app.pipeline.deadletter import dead_letter
from stream_app.pipeline.journal import encode_events
from stream_app.tools.topics import decode_dead_letter

RAW = RawRecord("in", 2, 41, 1_700_000_000_000, b"k", b"\x00bad", (("h", b"v"),))


def test_event_ids_are_per_app_and_source_record():
    first = decode_dead_letter(dead_letter(RAW, "LATE_RECORD", "closed", "w1", app_id="clearing-a"))
    again = decode_dead_letter(dead_letter(RAW, "LATE_RECORD", "closed", "w2", app_id="clearing-a"))
    other_app = decode_dead_letter(dead_letter(RAW, "LATE_RECORD", "closed", "w1", app_id="clearing-b"))
    other_reason = decode_dead_letter(dead_letter(RAW, "BAD_MAGIC_BYTE", "x", "w1", app_id="clearing-a"))
    assert first["event_id"] == again["event_id"]  # dead-lettered again after a re-read: the same id
    assert len({first["event_id"], other_app["event_id"], other_reason["event_id"]}) == 3
    assert (first["source_topic"], first["source_offset"], first["original_value"]) == ("in", 41, b"\x00bad")


def test_an_envelope_written_before_0_2_0_still_reads():
    envelope = decode_dead_letter(dead_letter(RAW, "LATE_RECORD", "closed", "w1"))
    old = encode_confluent(1002, DEAD_LETTER_SCHEMA_V1, {k: v for k, v in envelope.items() if k != "event_id"})
    read = decode_dead_letter(old)
    assert read["event_id"] == "" and read["source_offset"] == 41 and read["reason"] == "LATE_RECORD"


def test_an_envelope_too_large_for_a_kafka_record_goes_without_the_value():
    import hashlib

    big = RawRecord("in", 0, 7, None, b"k", b"{" + b"x" * 40_000, ())
    payload = dead_letter(big, "JSON_DECODE_ERROR", "not valid JSON (position 1)", "w1", max_bytes=20_000)
    assert len(payload) <= 20_000
    envelope = decode_dead_letter(payload)
    assert envelope["original_value"] is None and envelope["original_key"] == b"k"
    assert f"original value withheld: 40001 bytes, sha256 {hashlib.sha256(big.value).hexdigest()}" in envelope["detail"]
    assert envelope["reason"] == "JSON_DECODE_ERROR" and envelope["source_offset"] == 7
    small = decode_dead_letter(dead_letter(RAW, "LATE_RECORD", "closed", "w1", max_bytes=20_000))
    assert small["original_value"] == RAW.value  # kept when it fits


def test_a_journal_event_written_before_0_3_0_still_reads():
    from stream_app.codecs.event_schemas import JOURNAL_SCHEMA_V1, JOURNAL_SCHEMA_V2
    from stream_app.core.records import SourceRecord
    from stream_app.core.windows import FileCut, FileKey
    from stream_app.pipeline.journal import Journal
    from stream_app.tools.topics import decode_journal

    cut = FileCut.of(FileKey("in", 0, 0, 3_600_000), 0, [SourceRecord("in", 0, 7, 1000, {})])
    event = Journal("w1", "app").finalize_failed(cut, "TEMPLATE_ERROR", "x", 1)
    old = encode_confluent(1001, JOURNAL_SCHEMA_V1, {k: v for k, v in event.items() if k != "terminal"})
    read = decode_journal(old)
    assert read["terminal"] is False and (read["event_type"], read["error_class"]) == ("finalize-failed", "TEMPLATE_ERROR")
    newer = encode_confluent(1001, JOURNAL_SCHEMA_V2, event)  # 0.3.x wrote its version under the shared id too
    assert decode_journal(newer)["terminal"] is True and decode_journal(newer)["destination"] is None
    (current,) = encode_events([event])
    assert decode_journal(current)["terminal"] is True


def test_local_ids_are_one_per_schema_version():
    """Without a registry each schema version has its own id; the two ids versions before 0.4.0
    shared still read both versions; a journal id is not a dead letter's."""
    import pytest

    from stream_app.codecs.event_schemas import (
        DEAD_LETTER_SCHEMA_ID,
        JOURNAL_SCHEMA_ID,
        LOCAL_WRITER_SCHEMAS,
        EventDecodeError,
        dead_letter_reader,
    )

    assert len(LOCAL_WRITER_SCHEMAS) == len({id(s) for s in LOCAL_WRITER_SCHEMAS.values()})
    assert dead_letter(RAW, "LATE_RECORD", "closed", "w1")[1:5] == DEAD_LETTER_SCHEMA_ID.to_bytes(4, "big")
    envelope = decode_dead_letter(dead_letter(RAW, "LATE_RECORD", "closed", "w1"))
    v1 = encode_confluent(1021, DEAD_LETTER_SCHEMA_V1, {k: v for k, v in envelope.items() if k != "event_id"})
    assert decode_dead_letter(v1)["event_id"] == "" and decode_dead_letter(v1)["source_offset"] == 41
    (journal_event,) = encode_events([{"event_id": "e", "event_type": "opened", "occurred_at": 1, "worker_id": "w",
                                       "file_key": None, "window_start": None, "window_end": None, "offsets": []}])
    assert journal_event[1:5] == JOURNAL_SCHEMA_ID.to_bytes(4, "big")
    with pytest.raises(EventDecodeError, match=f"unknown schema id {JOURNAL_SCHEMA_ID}"):
        dead_letter_reader().decode(journal_event)
    with pytest.raises(EventDecodeError, match="not in the Confluent wire format"):
        decode_dead_letter(b"\x00\x00")
