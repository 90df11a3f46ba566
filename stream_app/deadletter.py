"""Dead-letter envelope: the original bytes, where they came from and why they were rejected."""

from __future__ import annotations

from stream_app.codecs.avro import encode_confluent, load_schema
from stream_app.codecs.registry import DEAD_LETTER_SCHEMA_ID
from stream_app.core.records import RawRecord
from stream_app.journal import event_id, now_ms
from stream_app.resources import AVRO_DIR

DEAD_LETTER_SCHEMA = load_schema(AVRO_DIR / "dead_letter.avsc")
# Envelopes written before 0.2.0: the same fields without the trailing event_id.
DEAD_LETTER_SCHEMA_V1 = {**DEAD_LETTER_SCHEMA, "fields": DEAD_LETTER_SCHEMA["fields"][:-1]}


def dead_letter(raw: RawRecord, reason: str, detail: str, worker_id: str, schema_id: int = DEAD_LETTER_SCHEMA_ID,
                app_id: str = "stream-app") -> bytes:
    envelope = {
        "event_id": event_id(app_id, "dead-letter", raw.topic, raw.partition, raw.offset, reason),
        "reason": reason,
        "detail": detail,
        "source_topic": raw.topic,
        "source_partition": raw.partition,
        "source_offset": raw.offset,
        "source_timestamp": raw.timestamp_ms,
        "original_key": raw.key,
        "original_value": raw.value,
        "original_headers": [{"key": k, "value": v} for k, v in raw.headers],
        "worker_id": worker_id,
        "dead_lettered_at": now_ms(),
    }
    return encode_confluent(schema_id, DEAD_LETTER_SCHEMA, envelope)
