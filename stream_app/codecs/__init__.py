"""Input codecs: raw Kafka bytes -> ``SourceRecord``; failures become dead-letter reasons."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from stream_app.core.records import RawRecord, SourceRecord

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS = timedelta(milliseconds=1)


class DecodeError(Exception):
    """A record that cannot be decoded.  ``reason`` is a stable code; ``detail`` has no record data."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class Decoder(Protocol):
    def decode(self, raw: RawRecord) -> SourceRecord: ...

    def decode_many(self, raws: Sequence[RawRecord]) -> Iterator[SourceRecord | DecodeError]:
        """One result per record, in order: the record, or the error that dead-letters it."""
        ...

    def prefetch(self, raws: Sequence[RawRecord]) -> None:
        """A hint that ``decode_many(raws)`` comes next: a decoder may start on it early."""
        ...


def decode_each(decoder: Decoder, raws: Sequence[RawRecord]) -> Iterator[SourceRecord | DecodeError]:
    decode = decoder.decode
    for raw in raws:
        try:
            yield decode(raw)
        except DecodeError as exc:
            yield exc


def event_time_ms(value: dict[str, Any], field: str) -> int:
    """Event time of a decoded record as epoch milliseconds (UTC)."""
    if field not in value or value[field] is None:
        raise DecodeError("MISSING_EVENT_TIME", f"event-time field {field!r} is missing or null")
    ts = value[field]
    if isinstance(ts, datetime):
        if ts.tzinfo is None:
            ts = ts.replace(tzinfo=UTC)
        return (ts - _EPOCH) // _ONE_MS
    if isinstance(ts, int) and not isinstance(ts, bool):
        return ts
    if isinstance(ts, str):
        try:
            parsed = datetime.fromisoformat(ts.replace("Z", "+00:00"))
        except ValueError:
            raise DecodeError("BAD_EVENT_TIME", f"event-time field {field!r} is not an ISO-8601 timestamp") from None
        if parsed.tzinfo is None:
            raise DecodeError("BAD_EVENT_TIME", f"event-time field {field!r} has no timezone")
        return event_time_ms({field: parsed}, field)
    raise DecodeError("BAD_EVENT_TIME", f"event-time field {field!r} has unsupported type {type(ts).__name__}")


def check_size(raw: RawRecord, max_bytes: int) -> bytes:
    if raw.value is None:
        raise DecodeError("NULL_VALUE", "record value is null (tombstone)")
    if len(raw.value) > max_bytes:
        raise DecodeError("OVERSIZED_RECORD", f"record value has {len(raw.value)} bytes, limit is {max_bytes}")
    return raw.value
