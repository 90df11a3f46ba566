"""A routed value decoded from its carried form is exactly the record the input codec gives."""

from __future__ import annotations

import json
import struct
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream_app.codecs import DecodeError
from stream_app.codecs.avro import AvroDecoder, SchemaResolver, encode_confluent, load_schema
from stream_app.codecs.carried import AS_READ, PACKED, CarriedDecoder, CarryingAvroDecoder, as_read
from stream_app.codecs.decode_process import ProcessAvroDecoder
from stream_app.codecs.json import JsonDecoder
from stream_app.codecs.repartition import decode, encode_runs
from stream_app.core.records import RawRecord
from stream_app.core.windows import FileKey
from stream_app.resources import AVRO_DIR
from stream_app.tools.demo import matched_records

SCHEMA_PATH = str(AVRO_DIR / "matched_record.avsc")


def typed(value: Any) -> Any:
    """The value with every leaf's type beside it: 1 == 1.0 == True must not pass for equal."""
    if isinstance(value, dict):
        return ("dict", [(k, typed(v)) for k, v in value.items()])  # key order too
    if isinstance(value, list):
        return ("list", [typed(v) for v in value])
    if isinstance(value, float) and value != value:
        return ("float", "nan")
    if isinstance(value, Decimal):
        return ("Decimal", str(value))
    return (type(value).__name__, value)


def routed(raw: RawRecord, carried: bytes) -> RawRecord:
    return RawRecord(raw.topic, raw.partition, raw.offset, None, None, carried)


def assert_same(direct, via_carried) -> None:
    assert typed(via_carried.value) == typed(direct.value)
    assert via_carried.event_time_ms == direct.event_time_ms
    assert (via_carried.topic, via_carried.partition, via_carried.offset) == (direct.topic, direct.partition,
                                                                              direct.offset)


@pytest.fixture(scope="module")
def demo_raws() -> list[RawRecord]:
    parsed = load_schema(SCHEMA_PATH)
    return [RawRecord("t", i % 3, i, None, None, encode_confluent(1, parsed, r))
            for i, r in enumerate(matched_records(300, seed=11))]


def test_demo_records_travel_packed_and_come_back_equal(demo_raws):
    resolver = SchemaResolver({1: SCHEMA_PATH})
    direct = AvroDecoder(resolver, "matched_at", 1_000_000)
    routing = CarryingAvroDecoder(resolver, "matched_at", 1_000_000)
    files = CarriedDecoder(AvroDecoder(SchemaResolver({1: SCHEMA_PATH}), "matched_at", 1_000_000),
                           SchemaResolver({1: SCHEMA_PATH}), "matched_at")
    for raw in demo_raws:
        record = routing.decode(raw)
        assert record.carried is not None and record.carried[0] == PACKED
        assert typed(record.value) == typed(direct.decode(raw).value)  # routing sees the usual record
        assert_same(direct.decode(raw), files.decode(routed(raw, record.carried)))


@pytest.mark.parametrize("reads", [None, ["matched_at", "currency", "amount"]])
def test_the_helper_packs_the_same_bytes_as_the_worker(demo_raws, reads):
    resolver = SchemaResolver({1: SCHEMA_PATH})
    local = CarryingAvroDecoder(resolver, "matched_at", 1_000_000)
    helper = ProcessAvroDecoder({1: SCHEMA_PATH}, None, "matched_at", 1_000_000, carry=True, reads=reads)
    try:
        got = list(helper.decode_many(demo_raws))
    finally:
        helper.close()
    for raw, record in zip(demo_raws, got, strict=True):
        expected = local.decode(raw)
        assert record.carried is not None and record.carried == expected.carried
        # with reads, the routing stage gets those fields only, converted as usual
        want = expected.value if reads is None else {name: expected.value[name] for name in reads}
        assert typed(record.value) == typed(want) and record.event_time_ms == expected.event_time_ms


ALL_TYPES = {"type": "record", "name": "Every", "fields": [
    {"name": "at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
    {"name": "maybe_at", "type": ["null", {"type": "long", "logicalType": "timestamp-micros"}]},
    {"name": "amount", "type": {"type": "bytes", "logicalType": "decimal", "precision": 18, "scale": 4}},
    {"name": "maybe_amount", "type": ["null", {"type": "bytes", "logicalType": "decimal", "precision": 9,
                                                "scale": 2}]},
    {"name": "s", "type": "string"}, {"name": "b", "type": "bytes"}, {"name": "i", "type": "int"},
    {"name": "l", "type": "long"}, {"name": "f", "type": "float"}, {"name": "d", "type": "double"},
    {"name": "flag", "type": "boolean"}, {"name": "nothing", "type": "null"},
    {"name": "kind", "type": {"type": "enum", "name": "Kind", "symbols": ["A", "B"]}},
    {"name": "fx", "type": {"type": "fixed", "name": "Four", "size": 4}},
    {"name": "tags", "type": {"type": "array", "items": "string"}},
    {"name": "attrs", "type": {"type": "map", "values": ["null", "long", "string"]}},
    {"name": "inner", "type": ["null", {"type": "record", "name": "Inner", "fields": [
        {"name": "x", "type": "double"}, {"name": "ys", "type": {"type": "array", "items": "bytes"}}]}]},
]}

_text = st.text(max_size=12)
_long = st.integers(-(2 ** 63), 2 ** 63 - 1)
_every = st.fixed_dictionaries({
    "at": st.integers(0, 253_402_300_799_000),
    "maybe_at": st.none() | st.integers(0, 253_402_300_799_000_000),
    "amount": st.integers(-(10 ** 14) + 1, 10 ** 14 - 1),
    "maybe_amount": st.none() | st.integers(-(10 ** 7) + 1, 10 ** 7 - 1),
    "s": _text, "b": st.binary(max_size=8), "i": st.integers(-(2 ** 31), 2 ** 31 - 1), "l": _long,
    "f": st.floats(width=32, allow_nan=False), "d": st.floats(), "flag": st.booleans(), "nothing": st.none(),
    "kind": st.sampled_from(["A", "B"]), "fx": st.binary(min_size=4, max_size=4),
    "tags": st.lists(_text, max_size=3),
    "attrs": st.dictionaries(_text, st.none() | _long | _text, max_size=3),
    "inner": st.none() | st.fixed_dictionaries({"x": st.floats(), "ys": st.lists(st.binary(max_size=4), max_size=2)}),
})


@pytest.fixture(scope="module")
def every_schema(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("carried") / "every.avsc"
    path.write_text(json.dumps(ALL_TYPES))
    return str(path)


def _avro_value(plain: dict) -> dict:
    """The fastavro writer's inputs for the logical fields."""
    value = dict(plain)
    value["at"] = datetime.fromtimestamp(plain["at"] / 1000, tz=UTC)
    if plain["maybe_at"] is not None:
        value["maybe_at"] = datetime.fromtimestamp(0, tz=UTC) + (
            datetime.fromtimestamp(plain["maybe_at"] // 1_000_000, tz=UTC) - datetime.fromtimestamp(0, tz=UTC))
    value["amount"] = Decimal(plain["amount"]).scaleb(-4)
    if plain["maybe_amount"] is not None:
        value["maybe_amount"] = Decimal(plain["maybe_amount"]).scaleb(-2)
    return value


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(plain=_every)
def test_every_avro_type_comes_back_exactly(every_schema, plain):
    resolver = SchemaResolver({5: every_schema})
    raw = RawRecord("t", 0, 1, None, None, encode_confluent(5, load_schema(every_schema), _avro_value(plain)))
    direct = AvroDecoder(resolver, "at", 1_000_000).decode(raw)
    record = CarryingAvroDecoder(resolver, "at", 1_000_000).decode(raw)
    assert record.carried is not None and record.carried[0] == PACKED
    assert_same(direct, CarriedDecoder(AvroDecoder(resolver, "at", 1_000_000), resolver, "at")
                .decode(routed(raw, record.carried)))


def test_nested_logical_types_travel_as_read(tmp_path):
    schema = {"type": "record", "name": "Outer", "fields": [
        {"name": "at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "legs", "type": {"type": "array", "items": {"type": "record", "name": "Leg", "fields": [
            {"name": "amount", "type": {"type": "bytes", "logicalType": "decimal", "precision": 9, "scale": 2}}]}}}]}
    path = tmp_path / "outer.avsc"
    path.write_text(json.dumps(schema))
    resolver = SchemaResolver({9: str(path)})
    when = datetime(2026, 3, 2, 6, 0, tzinfo=UTC)
    raw = RawRecord("t", 0, 4, None, None, encode_confluent(9, load_schema(path), {"at": when, "legs": [
        {"amount": Decimal("12.05")}]}))
    record = CarryingAvroDecoder(resolver, "at", 10_000).decode(raw)
    assert record.carried is None  # the routing stage sends the value as read
    assert raw.value is not None
    carried = as_read(raw.value)
    assert carried[0] == AS_READ
    assert_same(AvroDecoder(resolver, "at", 10_000).decode(raw),
                CarriedDecoder(AvroDecoder(resolver, "at", 10_000), resolver, "at").decode(routed(raw, carried)))


def test_json_travels_as_read():
    decoder = JsonDecoder("at", ["amount"], 10_000)
    raw = RawRecord("t", 2, 9, None, None, b'{"at": "2026-03-02T06:00:00Z", "amount": "1.10", "n": 3}')
    assert decoder.decode(raw).carried is None
    assert raw.value is not None
    assert_same(decoder.decode(raw), CarriedDecoder(decoder, None, "at").decode(routed(raw, as_read(raw.value))))


@pytest.mark.parametrize("carried, reason", [
    (b"", "NULL_VALUE"),
    (b"\x07abc", "BAD_ROUTED_VALUE"),
    (struct.pack(">BI", PACKED, 99) + b"\x90", "UNKNOWN_SCHEMA_ID"),
    (struct.pack(">BI", PACKED, 1) + b"\xc1", "BAD_ROUTED_VALUE"),  # 0xc1: never used by msgpack
    (struct.pack(">BI", PACKED, 1) + b"\x92\x01", "BAD_ROUTED_VALUE"),  # truncated
])
def test_a_damaged_routed_value_is_a_decode_error(carried, reason):
    resolver = SchemaResolver({1: SCHEMA_PATH})
    decoder = CarriedDecoder(AvroDecoder(resolver, "matched_at", 10_000), resolver, "matched_at")
    with pytest.raises(DecodeError) as err:
        decoder.decode(RawRecord("t", 0, 0, None, None, carried))
    assert err.value.reason == reason


def test_version_1_runs_are_read_as_values_as_read():
    key = FileKey(None, None, 0, 21_600_000, (("currency", "EUR"),))
    (payload,) = encode_runs(key, ("in", 2), [(5, 100, b"\x00avro"), (6, 200, None)])
    v1 = bytes([1]) + payload[1:]
    run = decode(v1)
    assert run.records == [(5, 100, as_read(b"\x00avro")), (6, 200, None)]  # type: ignore[union-attr]
    assert decode(payload).records == [(5, 100, b"\x00avro"), (6, 200, None)]  # type: ignore[union-attr]


@pytest.mark.parametrize("fields", [frozenset({"record_id", "amount", "currency"}), frozenset({"amount"})])
def test_the_file_stage_builds_only_the_fields_its_files_read(demo_raws, fields):
    """Projected, a record holds exactly ``fields``, each equal to the full decode's (logical
    types converted), through ``decode`` (with the event-time field, which gives it its time)
    and ``decode_run`` (whose entries carry the time the routing stage read)."""
    resolver = SchemaResolver({1: SCHEMA_PATH})
    direct = AvroDecoder(resolver, "matched_at", 1_000_000)
    routing = CarryingAvroDecoder(resolver, "matched_at", 1_000_000)
    files = CarriedDecoder(direct, resolver, "matched_at", fields)
    entries = []
    for raw in demo_raws[:50]:
        routed_record = routing.decode(raw)
        carried = routed_record.carried
        assert carried is not None
        full = direct.decode(raw)
        wanted = {name: full.value[name] for name in full.value if name in fields}
        single = files.decode(routed(raw, carried))
        assert typed(single.value) == typed({name: value for name, value in full.value.items()
                                             if name in fields | {"matched_at"}})
        assert single.event_time_ms == routed_record.event_time_ms == full.event_time_ms
        entries.append((raw.offset, routed_record.event_time_ms, carried, wanted, full.event_time_ms))
    run = files.decode_run(("t", 0), [(offset, millis, carried) for offset, millis, carried, _, _ in entries])
    assert [typed(r.value) for r in run] == [typed(e[3]) for e in entries]
    assert [r.event_time_ms for r in run] == [e[4] for e in entries]


def test_a_field_the_schema_lacks_makes_the_file_stage_build_the_whole_record(demo_raws):
    """``record.get(...)`` reads "get", which is no field: the template needs the whole dict."""
    resolver = SchemaResolver({1: SCHEMA_PATH})
    direct = AvroDecoder(resolver, "matched_at", 1_000_000)
    carried = CarryingAvroDecoder(resolver, "matched_at", 1_000_000).decode(demo_raws[0]).carried
    assert carried is not None
    files = CarriedDecoder(direct, resolver, "matched_at", frozenset({"get", "amount"}))
    assert typed(files.decode(routed(demo_raws[0], carried)).value) == typed(direct.decode(demo_raws[0]).value)


def test_a_projected_packed_value_with_the_wrong_field_count_is_a_decode_error():
    import msgpack

    resolver = SchemaResolver({1: SCHEMA_PATH})
    decoder = CarriedDecoder(AvroDecoder(resolver, "matched_at", 10_000), resolver, "matched_at",
                             frozenset({"amount"}))
    with pytest.raises(DecodeError) as err:
        decoder.decode(RawRecord("t", 0, 0, None, None, struct.pack(">BI", PACKED, 1) + msgpack.packb([1, 2])))
    assert err.value.reason == "BAD_ROUTED_VALUE"
