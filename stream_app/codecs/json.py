"""JSON input (orjson).  Money fields are converted to Decimal; they should be JSON strings."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import orjson

from stream_app.codecs import DecodeError, check_size, decode_each, event_time_ms
from stream_app.core.decimals import NotExact, exact_decimal
from stream_app.core.records import RawRecord, SourceRecord


class JsonDecoder:
    def __init__(self, event_time_field: str, decimal_fields: list[str], max_record_bytes: int) -> None:
        self._event_time_field = event_time_field
        self._decimal_fields = tuple(decimal_fields)
        self._max = max_record_bytes

    def decode(self, raw: RawRecord) -> SourceRecord:
        payload = check_size(raw, self._max)
        try:
            value = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            raise DecodeError("JSON_DECODE_ERROR", f"not valid JSON (position {exc.pos})") from None
        if not isinstance(value, dict):
            raise DecodeError("NOT_AN_OBJECT", f"JSON value is a {type(value).__name__}, expected an object")
        for name in self._decimal_fields:
            current = value.get(name)
            if current is None or isinstance(current, bool):
                continue
            try:
                # A JSON number arrives as float; its shortest repr is the literal that was sent.
                value[name] = exact_decimal(current if isinstance(current, str) else repr(current))
            except NotExact as exc:
                raise DecodeError("BAD_DECIMAL", f"field {name!r} {exc}") from None
        return SourceRecord(raw.topic, raw.partition, raw.offset, event_time_ms(value, self._event_time_field), value)

    def decode_many(self, raws: Sequence[RawRecord]) -> Iterator[SourceRecord | DecodeError]:
        return decode_each(self, raws)

    def prefetch(self, raws: Sequence[RawRecord]) -> None:
        pass  # decoding happens in decode_many, in this thread
