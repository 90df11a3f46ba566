"""The form in which a routed record's value travels from the routing stage to the file stage.

The routing stage has already read every value it routes; the file stage needs it again to
render the file.  Reading Avro twice was a third of the CPU of business files, so an Avro
record travels as its top-level field values, logical ones still plain, packed with msgpack:
unpacking that costs a quarter of an Avro read, and the file stage converts the logical fields
with the same ``RecordReader`` as any decode.  So a record decoded from its carried form is the
record the input codec gives (tests/codecs/test_carried.py holds them equal).

Two forms, told apart by the first byte::

    0 (as read): the input value's bytes as read from Kafka, decoded again with the input codec
                 (JSON, and Avro values msgpack cannot hold: nested logical types)
    1 (packed):  i32 schema id (big-endian) | msgpack array of the record's top-level fields
                 in schema order (ints, floats, strings, bytes, nulls, lists, maps)

msgpack, not marshal or pickle: the repartition topic is read back by the file stage, and a
msgpack reader only ever builds plain values from whatever bytes it is given.

The file stage may build only the fields its output reads (``CarriedDecoder(fields=...)``, from
``TemplateAssembler.fields_read``): building and converting all of a record's fields was half of
the file stage's CPU, for records whose template prints four of twenty-four.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator, Sequence
from operator import itemgetter
from typing import Any

import msgpack

from stream_app.codecs import DecodeError, Decoder, check_size, decode_each, event_time_ms
from stream_app.codecs.avro import AvroDecoder, RecordReader, SchemaResolver, convert_plain, read_confluent
from stream_app.core.records import RawRecord, SourceRecord

AS_READ, PACKED = 0, 1
_PACKED_HEAD = struct.Struct(">BI")
_AS_READ_HEAD = bytes([AS_READ])


def as_read(value: bytes) -> bytes:
    return _AS_READ_HEAD + value


def pack(schema_id: int, reader: RecordReader, value: dict[str, Any]) -> bytes | None:
    """The packed form of a value ``reader`` read (plain top-level logical fields), or None
    when msgpack cannot hold it exactly (the caller sends the value as read)."""
    names = reader.names
    if names is None or len(value) != len(names):
        return None
    try:
        # fastavro builds the record's dict in schema order; the reader zips the names back on
        return _PACKED_HEAD.pack(PACKED, schema_id) + msgpack.packb(list(value.values()))
    except (TypeError, ValueError, OverflowError):  # a datetime or Decimal nested in the record
        return None


def unpack(reader: RecordReader, carried: bytes) -> dict[str, Any]:
    """The plain value of a packed form (``reader`` is that of the schema id it names)."""
    assert reader.names is not None
    return dict(zip(reader.names, msgpack.unpackb(memoryview(carried)[_PACKED_HEAD.size:])))


def packed_schema_id(carried: bytes) -> int | None:
    if len(carried) < _PACKED_HEAD.size or carried[0] != PACKED:
        return None
    return int(_PACKED_HEAD.unpack_from(carried)[1])


class CarryingAvroDecoder(AvroDecoder):
    """The routing stage's in-process Avro decoder: records come with their packed form."""

    def decode(self, raw: RawRecord) -> SourceRecord:
        schema_id, reader, value = read_confluent(check_size(raw, self._max), self._resolver)
        carried = pack(schema_id, reader, value)  # before the logical fields are converted
        millis = convert_plain(schema_id, reader, value, self._event_time_field)
        return self.source_record(raw, value, millis, carried)


Picker = Callable[[Sequence[Any]], dict[str, Any]]  # a packed record's field values -> its value


def _picker(names: tuple[str, ...], fields: frozenset[str] | None) -> Picker:
    """Builds a record's value from its packed field values: all fields, or only ``fields`` when
    the schema has every one of them (a name it lacks may be a dict method a template calls, as
    in ``record.get(...)``, which needs the whole record)."""
    if fields is None or not fields <= set(names):
        return lambda values: dict(zip(names, values, strict=True))
    picked = tuple(i for i, name in enumerate(names) if name in fields)
    kept = tuple(names[i] for i in picked)
    count = len(names)
    take = itemgetter(*picked)

    def pick(values: Sequence[Any]) -> dict[str, Any]:
        if len(values) != count:
            raise ValueError("packed value has the wrong number of fields")
        return dict(zip(kept, take(values))) if len(kept) > 1 else {kept[0]: values[picked[0]]}

    return pick


class CarriedDecoder:
    """The file stage's decoder: routed values in their carried form -> the input codec's records.

    ``fields``: the top-level fields to build (None: all).  ``decode`` builds the event-time
    field too, to find the record's event time; ``decode_run`` takes it from the routed entry
    (the routing stage's reading of the same value), so it builds and converts that field only
    when the files read it."""

    def __init__(self, input_decoder: Decoder, resolver: SchemaResolver | None, event_time_field: str,
                 fields: frozenset[str] | None = None) -> None:
        self._input = input_decoder
        self._resolver = resolver
        self._time_field = event_time_field
        self._fields = fields
        self._pickers: dict[tuple[int, bool], Picker] = {}  # by schema id, and with the event-time field

    def _pick(self, schema_id: int, reader: RecordReader, with_time: bool = True) -> Picker:
        picker = self._pickers.get((schema_id, with_time))
        if picker is None:
            assert reader.names is not None
            fields = self._fields
            if fields is not None and with_time:
                fields = fields | {self._time_field}
            picker = self._pickers[(schema_id, with_time)] = _picker(reader.names, fields)
        return picker

    def decode(self, raw: RawRecord) -> SourceRecord:
        carried = raw.value
        if not carried:
            raise DecodeError("NULL_VALUE", "routed value is empty")
        if carried[0] == AS_READ:
            return self._input.decode(RawRecord(raw.topic, raw.partition, raw.offset, raw.timestamp_ms, raw.key,
                                                carried[1:], raw.headers))
        schema_id = packed_schema_id(carried)
        if schema_id is None or self._resolver is None:
            raise DecodeError("BAD_ROUTED_VALUE", f"routed value of unknown form {carried[0]}")
        reader = self._resolver.get(schema_id)
        if reader is None:
            raise DecodeError("UNKNOWN_SCHEMA_ID", f"schema id {schema_id} is not known")
        if reader.names is None:
            raise DecodeError("BAD_ROUTED_VALUE", f"schema {schema_id} is not a record schema")
        try:
            value = self._pick(schema_id, reader)(msgpack.unpackb(memoryview(carried)[_PACKED_HEAD.size:]))
        except (ValueError, TypeError) as exc:  # msgpack's errors on bad bytes
            raise DecodeError("BAD_ROUTED_VALUE", f"packed value does not unpack ({type(exc).__name__})") from None
        millis = convert_plain(schema_id, reader, value, self._time_field)
        return _record(raw, value, millis, self._time_field)

    def decode_many(self, raws: Sequence[RawRecord]) -> Iterator[SourceRecord | DecodeError]:
        return decode_each(self, raws)

    def prefetch(self, raws: Sequence[RawRecord]) -> None:
        pass  # unpacking is cheap: done in decode_many, in this thread

    def decode_run(self, source: tuple[str, int], entries: Sequence[tuple[int, int, bytes | None]]) -> list[SourceRecord]:
        """The records of a routed run (raises ``DecodeError``): ``decode`` per entry, with the
        packed form's path inlined and its reader looked up once per schema id (the hot path).
        A record's event time is its entry's: what the routing stage read from the same value."""
        topic, partition = source
        records: list[SourceRecord] = []
        readers: dict[int, tuple[RecordReader, Picker]] = {}
        unpackb = msgpack.unpackb
        for offset, event_time, carried in entries:
            if carried and carried[0] == PACKED and self._resolver is not None:
                schema_id = _PACKED_HEAD.unpack_from(carried)[1]
                known = readers.get(schema_id)
                if known is None:
                    found = self._resolver.get(schema_id)
                    if found is None or found.names is None:
                        raise DecodeError("UNKNOWN_SCHEMA_ID", f"schema id {schema_id} is not known")
                    known = readers[schema_id] = (found, self._pick(schema_id, found, with_time=False))
                reader, pick = known
                try:
                    value = pick(unpackb(memoryview(carried)[_PACKED_HEAD.size:]))
                except (ValueError, TypeError) as exc:
                    raise DecodeError("BAD_ROUTED_VALUE", f"packed value does not unpack ({type(exc).__name__})") from None
                convert_plain(schema_id, reader, value, None)
                records.append(SourceRecord(topic, partition, offset, event_time, value))
            else:
                records.append(self.decode(RawRecord(topic, partition, offset, None, None, carried)))
        return records


def _record(raw: RawRecord, value: dict[str, Any], millis: int | None, time_field: str) -> SourceRecord:
    if millis is None:
        millis = event_time_ms(value, time_field)
    return SourceRecord(raw.topic, raw.partition, raw.offset, millis, value)
