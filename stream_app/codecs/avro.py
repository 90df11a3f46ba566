"""Avro in the Confluent wire format: magic byte 0, 4-byte big-endian schema id, Avro binary.

Schemas come from a Confluent-API schema registry when one is configured (codecs/registry.py),
else from the ``avroSchemas`` map of schema id -> ``.avsc`` file.
"""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Context, Decimal, DecimalException, Inexact, InvalidOperation
from pathlib import Path
from typing import Any

import fastavro

from stream_app.codecs import DecodeError, check_size, decode_each, event_time_ms
from stream_app.codecs.registry import SchemaLookup
from stream_app.core.decimals import NotExact
from stream_app.core.records import RawRecord, SourceRecord

MAGIC_BYTE = 0
_HEADER = struct.Struct(">bI")


def _schema_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def load_schema(path: str | Path) -> dict:
    parsed = fastavro.parse_schema(_schema_json(path))
    assert isinstance(parsed, dict), f"{path} is not a record schema"
    return parsed


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
Converter = Callable[[Any], Any]


# timedelta's arguments by position (days, seconds, microseconds): a third cheaper than by keyword.
def _timestamp_millis(value: int) -> datetime:
    return _EPOCH + timedelta(0, 0, value * 1000)


def _timestamp_micros(value: int) -> datetime:
    return _EPOCH + timedelta(0, 0, value)


def _decimal(precision: int, scale: int) -> Converter:
    # Inexact trapped: where fastavro's create_decimal would round a coefficient beyond the
    # schema's precision (bytes no conforming writer makes), this raises.
    context = Context(prec=precision, traps=[Inexact, InvalidOperation])
    from_bytes = int.from_bytes

    def convert(value: bytes) -> Decimal:
        # Decimal(int) is exact; scaleb keeps the coefficient as fastavro's create_decimal does,
        # so the result is the same Decimal, digits and exponent.
        return Decimal(from_bytes(value, "big", signed=True)).scaleb(-scale, context)
    return convert


def _plain_type(field_type: Any) -> tuple[Any, Converter] | None:
    """A top-level field type without its logical type, and the conversion fastavro would apply."""
    if isinstance(field_type, list):  # ["null", <logical>]: the usual optional field
        if len(field_type) == 2 and "null" in field_type:
            index = 1 - field_type.index("null")
            inner = _plain_type(field_type[index])
            if inner is not None:
                plain = list(field_type)
                plain[index] = inner[0]
                return plain, inner[1]
        return None
    if not isinstance(field_type, dict):
        return None
    logical, base = field_type.get("logicalType"), field_type.get("type")
    if base == "long" and logical == "timestamp-millis":
        return "long", _timestamp_millis
    if base == "long" and logical == "timestamp-micros":
        return "long", _timestamp_micros
    precision, scale = field_type.get("precision"), field_type.get("scale", 0)
    if (base == "bytes" and logical == "decimal" and type(precision) is int and type(scale) is int
            and 0 <= scale <= precision):
        return "bytes", _decimal(precision, scale)
    return None


class RecordReader:
    """Reads the Avro body of one schema id.

    fastavro converts logical types through a lookup per datum that costs about 2 µs per field,
    a third of the decode time of a matched record.  For top-level timestamp and decimal fields
    this reader lets fastavro read the plain long / bytes and converts them itself, with the
    arithmetic fastavro uses (same values; tests/codecs/test_codecs.py compares the two).  Everything
    else, nested logical types included, is left to fastavro.
    """

    def __init__(self, schema: Any) -> None:
        self._converters: list[tuple[str, Converter]] = []
        plain = schema
        if isinstance(schema, dict) and schema.get("type") == "record" and isinstance(schema.get("fields"), list):
            fields = []
            for field in schema["fields"]:
                found = _plain_type(field.get("type")) if isinstance(field, dict) else None
                if found is not None:
                    field = {**field, "type": found[0]}
                    self._converters.append((field["name"], found[1]))
                fields.append(field)
            plain = {**schema, "fields": fields}
        fastavro.parse_schema(schema)  # the schema as written must be valid, not only its plain form
        self._plain = fastavro.parse_schema(plain)
        # top-level field names in schema order: the order of a read value's keys (codecs/carried.py)
        self.names: tuple[str, ...] | None = (
            tuple(f["name"] for f in plain["fields"]) if isinstance(plain, dict) and plain.get("type") == "record" else None)

    def read_plain(self, buf: io.BytesIO) -> Any:
        """The value with the top-level logical fields still plain (see ``convert``)."""
        return fastavro.schemaless_reader(buf, self._plain, None)

    def convert(self, value: dict, time_field: str | None = None, time_as_millis: bool = False) -> int | None:
        """Converts the plain logical fields in place; returns ``time_field`` as epoch ms when it
        is a timestamp-millis field (which spares the caller converting the datetime back).
        ``value`` may hold only some of the fields (the routing stage's, see decode_process.py).
        ``time_as_millis``: the caller reads that field only as those ms; it is left out of
        ``value`` rather than built as a datetime nobody reads."""
        millis = None
        for name, convert in self._converters:
            field = value.get(name)
            if field is not None:
                if name == time_field and convert is _timestamp_millis:
                    millis = field
                    if time_as_millis:
                        del value[name]
                        continue
                try:
                    value[name] = convert(field)
                except DecimalException:
                    raise NotExact(f"field {name!r} has more digits than its schema's precision") from None
        return millis

    def read(self, buf: io.BytesIO, time_field: str | None = None) -> tuple[Any, int | None]:
        """The decoded value (as fastavro would give it) and ``time_field`` in epoch ms, if known."""
        value = self.read_plain(buf)
        return value, self.convert(value, time_field) if self._converters else None


class SchemaResolver:
    """Schema id -> record reader, from local files or a registry (cached either way).

    ``registry``: the registry client's configuration (codecs/registry.py ``client_conf``).
    """

    def __init__(self, local: dict[int, str] | None = None, registry: dict[str, Any] | None = None):
        self._cache: dict[int, RecordReader] = {}
        self._registry_conf = registry
        self._lookup: SchemaLookup | None = None
        if registry is None:
            for schema_id, path in (local or {}).items():
                self._cache[int(schema_id)] = RecordReader(_schema_json(path))

    def get(self, schema_id: int) -> RecordReader | None:
        if schema_id in self._cache:
            return self._cache[schema_id]
        if self._registry_conf is None:
            return None
        if self._lookup is None:
            self._lookup = SchemaLookup(self._registry_conf)
        text = self._lookup.schema_text(schema_id)
        if text is None:
            return None
        try:
            reader = RecordReader(json.loads(text))
        except Exception:  # a registered schema fastavro cannot parse: its records cannot be read
            return None
        self._cache[schema_id] = reader
        return reader


def encode_confluent(schema_id: int, parsed_schema: Any, record: dict) -> bytes:
    buf = io.BytesIO()
    buf.write(_HEADER.pack(MAGIC_BYTE, schema_id))
    fastavro.schemaless_writer(buf, parsed_schema, record)
    return buf.getvalue()


def read_confluent(payload: bytes, resolver: SchemaResolver) -> tuple[int, RecordReader, dict]:
    """Schema id, its reader and the record with top-level logical fields still plain."""
    if len(payload) < _HEADER.size:
        raise DecodeError("TRUNCATED_AVRO", f"payload of {len(payload)} bytes is shorter than the wire-format header")
    magic, schema_id = _HEADER.unpack_from(payload)
    if magic != MAGIC_BYTE:
        raise DecodeError("BAD_MAGIC_BYTE", f"magic byte is {magic}, expected {MAGIC_BYTE}")
    reader = resolver.get(schema_id)
    if reader is None:
        raise DecodeError("UNKNOWN_SCHEMA_ID", f"schema id {schema_id} is not known")
    buf = io.BytesIO(payload)
    buf.seek(_HEADER.size)
    try:
        value = reader.read_plain(buf)
    except Exception as exc:  # fastavro raises EOFError, ValueError, IndexError, ... on bad bytes
        raise DecodeError("AVRO_DECODE_ERROR", f"bytes do not match schema {schema_id} ({type(exc).__name__})") from None
    if buf.tell() != len(payload):
        raise DecodeError("AVRO_DECODE_ERROR", f"{len(payload) - buf.tell()} trailing bytes after the record")
    if not isinstance(value, dict):
        raise DecodeError("NOT_A_RECORD", f"schema {schema_id} is not a record schema")
    return schema_id, reader, value


def convert_plain(schema_id: int, reader: RecordReader, value: dict, time_field: str | None,
                  time_as_millis: bool = False) -> int | None:
    """``RecordReader.convert`` with its failures (a timestamp beyond year 9999) as decode errors."""
    try:
        return reader.convert(value, time_field, time_as_millis)
    except NotExact as inexact:  # one name per handler: compiled, a shared name takes the first one's type
        raise DecodeError("BAD_DECIMAL", str(inexact)) from None
    except Exception as exc:  # OverflowError of a timestamp beyond year 9999, ...
        raise DecodeError("AVRO_DECODE_ERROR", f"bytes do not match schema {schema_id} ({type(exc).__name__})") from None


def decode_confluent(payload: bytes, resolver: SchemaResolver, time_field: str | None = None) -> tuple[dict, int | None]:
    """The record, and its ``time_field`` in epoch ms when the reader had it at hand (else None)."""
    schema_id, reader, value = read_confluent(payload, resolver)
    return value, convert_plain(schema_id, reader, value, time_field)


class AvroDecoder:
    def __init__(self, resolver: SchemaResolver, event_time_field: str, max_record_bytes: int) -> None:
        self._resolver = resolver
        self._event_time_field = event_time_field
        self._max = max_record_bytes

    def decode(self, raw: RawRecord) -> SourceRecord:
        value, millis = decode_confluent(check_size(raw, self._max), self._resolver, self._event_time_field)
        return self.source_record(raw, value, millis)

    def source_record(self, raw: RawRecord, value: dict, millis: int | None, carried: bytes | None = None) -> SourceRecord:
        if millis is None:
            millis = event_time_ms(value, self._event_time_field)
        return SourceRecord(raw.topic, raw.partition, raw.offset, millis, value, None, carried)

    def decode_many(self, raws: Sequence[RawRecord]) -> Iterator[SourceRecord | DecodeError]:
        return decode_each(self, raws)

    def prefetch(self, raws: Sequence[RawRecord]) -> None:
        pass  # decoding happens in decode_many, in this thread
