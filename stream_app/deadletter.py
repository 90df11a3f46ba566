"""Dead-letter envelope: the original bytes, where they came from and why they were rejected."""

from __future__ import annotations

from stream_app.codecs.avro import encode_confluent, load_schema
from stream_app.codecs.registry import DEAD_LETTER_SCHEMA_ID
from stream_app.core.records import RawRecord
from stream_app.journal import now_ms
from stream_app.resources import AVRO_DIR

DEAD_LETTER_SCHEMA = load_schema(AVRO_DIR / "dead_letter.avsc")


def dead_letter(raw: RawRecord, reason: str, detail: str, worker_id: str, schema_id: int = DEAD_LETTER_SCHEMA_ID) -> bytes:
    envelope = {
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
