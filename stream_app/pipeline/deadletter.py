"""Dead-letter envelope: the original bytes, where they came from and why they were rejected."""

from __future__ import annotations

import hashlib

from stream_app.codecs.avro import encode_confluent
from stream_app.codecs.event_schemas import DEAD_LETTER_SCHEMA, DEAD_LETTER_SCHEMA_ID
from stream_app.core.records import RawRecord
from stream_app.pipeline.journal import event_id, now_ms

# What a Kafka record may hold by default (a broker's message.max.bytes is 1 MiB + overhead).
MAX_ENVELOPE_BYTES = 1_000_000


def dead_letter(raw: RawRecord, reason: str, detail: str, worker_id: str, schema_id: int = DEAD_LETTER_SCHEMA_ID,
                app_id: str = "stream-app", max_bytes: int = MAX_ENVELOPE_BYTES) -> bytes:
    """The encoded envelope.  One that would not fit a Kafka record (a record near the input's
    size limit) goes without the original value, its length and sha256 in the detail instead:
    a dead letter that cannot be written would stop the partition (and crash on every restart)."""
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
    payload = encode_confluent(schema_id, DEAD_LETTER_SCHEMA, envelope)
    if len(payload) <= max_bytes or raw.value is None:
        return payload
    digest = hashlib.sha256(raw.value).hexdigest()
    envelope.update(original_value=None, detail=f"{detail}; original value withheld: {len(raw.value)} bytes, "
                                                f"sha256 {digest} (the envelope would exceed {max_bytes} bytes)")
    payload = encode_confluent(schema_id, DEAD_LETTER_SCHEMA, envelope)
    if len(payload) > max_bytes:  # a huge key or headers too: coordinates and reason only
        envelope.update(original_key=None, original_headers=[])
        payload = encode_confluent(schema_id, DEAD_LETTER_SCHEMA, envelope)
    return payload
