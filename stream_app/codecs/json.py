"""JSON input (orjson).  Money fields are converted to Decimal, exactly or as a dead letter.

An amount sent as a JSON string is read as written.  An amount sent as a JSON number is read
from its literal, never through a float (orjson parses numbers as binary doubles, which keep
about 17 significant digits): ``jsonNumberAmounts: exact`` parses the record once more with
numbers as Decimal (only records that carry such an amount pay for it), ``reject`` makes it a
dead letter asking for a string.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from decimal import Decimal
from typing import Any, Literal

import orjson

from stream_app.codecs import DecodeError, check_size, decode_each, event_time_ms
from stream_app.core.decimals import NotExact, exact_decimal
from stream_app.core.records import RawRecord, SourceRecord

_KEY_END = re.compile(rb'"\s*:')
_QUOTE_SPACE = re.compile(rb'"[ \t\r\n]')


def _key_count(value: Any) -> int:
    """The keys of every object in a parsed JSON value."""
    count, stack = 0, [value]
    while stack:
        item = stack.pop()
        if type(item) is dict:
            count += len(item)
            stack.extend([v for v in item.values() if type(v) is dict or type(v) is list])
        elif type(item) is list:
            stack.extend([v for v in item if type(v) is dict or type(v) is list])
    return count


def _number_literals(payload: bytes) -> dict[str, Any]:
    """The top-level values of ``payload`` with every JSON number as the Decimal of its literal."""
    literals: dict[str, Any] = json.loads(payload, parse_float=Decimal, parse_int=Decimal)
    return literals


def _first_duplicate(payload: bytes) -> str | None:
    found: list[str] = []

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: set[str] = set()
        for key, _ in items:
            if key in seen and not found:
                found.append(key)
            seen.add(key)
        return dict(items)

    json.loads(payload, object_pairs_hook=pairs)
    return found[0] if found else None


def duplicate_key(payload: bytes, value: Any) -> str | None:
    """The first key an object of ``payload`` holds twice, or None.

    orjson keeps the last of duplicated keys silently.  Every key written is followed by white
    space and one colon, so a count of colons (or of ``":`` when no quote is followed by white
    space) bounds the number of keys written from above; equal to the number of keys parsed, no
    key was written twice.  The first count costs half a microsecond and holds unless strings
    contain colons (ISO times); only a record that fails every count is parsed once more.
    """
    keys = len(value) if payload.count(b"{") == 1 else _key_count(value)
    if payload.count(b":") == keys:
        return None
    if _QUOTE_SPACE.search(payload) is None:
        if payload.count(b'":') == keys:
            return None
    elif len(_KEY_END.findall(payload)) == keys:
        return None
    return _first_duplicate(payload)


class JsonDecoder:
    def __init__(self, event_time_field: str, decimal_fields: list[str], max_record_bytes: int,
                 duplicate_keys: Literal["reject", "lastWins"] = "reject",
                 number_amounts: Literal["exact", "reject"] = "exact") -> None:
        self._event_time_field = event_time_field
        self._numbers_exact = number_amounts == "exact"
        self._decimal_fields = tuple(decimal_fields)
        self._max = max_record_bytes
        self._reject_duplicates = duplicate_keys == "reject"

    def decode(self, raw: RawRecord) -> SourceRecord:
        payload = check_size(raw, self._max)
        try:
            value = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            raise DecodeError("JSON_DECODE_ERROR", f"not valid JSON (position {exc.pos})") from None
        if not isinstance(value, dict):
            raise DecodeError("NOT_AN_OBJECT", f"JSON value is a {type(value).__name__}, expected an object")
        if self._reject_duplicates:
            duplicate = duplicate_key(payload, value)
            if duplicate is not None:  # a key is schema, not record data; bounded all the same
                raise DecodeError("DUPLICATE_KEY", f"key {duplicate[:64]!r} appears twice in one object")
        literals: dict[str, Any] | None = None
        for name in self._decimal_fields:
            current = value.get(name)
            if current is None or isinstance(current, bool):
                continue
            if not isinstance(current, str):
                if not isinstance(current, (int, float)):
                    raise DecodeError("BAD_DECIMAL", f"field {name!r} is a JSON {type(current).__name__}, not a number")
                if not self._numbers_exact:
                    raise DecodeError("NUMBER_AMOUNT", f"field {name!r} is a JSON number; send amounts as JSON strings"
                                      " (or set input.jsonNumberAmounts: exact)")
                if literals is None:  # the literal that was sent, not the double orjson made of it
                    literals = _number_literals(payload)
                current = literals[name]
            try:
                value[name] = exact_decimal(current)
            except NotExact as exc:
                raise DecodeError("BAD_DECIMAL", f"field {name!r} {exc}") from None
        return SourceRecord(raw.topic, raw.partition, raw.offset, event_time_ms(value, self._event_time_field), value)

    def decode_many(self, raws: Sequence[RawRecord]) -> Iterator[SourceRecord | DecodeError]:
        return decode_each(self, raws)

    def prefetch(self, raws: Sequence[RawRecord]) -> None:
        pass  # decoding happens in decode_many, in this thread
