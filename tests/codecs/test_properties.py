"""Property-based: random bytes and random records never cause an unhandled exception.

Whatever arrives, the decoders raise ``DecodeError`` (a dead-letter reason), projection raises
``InvalidRecord`` (field and rule), assembly raises ``AssemblyError`` — never anything else.
"""

from __future__ import annotations

import io
from datetime import UTC, datetime
from decimal import Decimal

import fastavro
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from stream_app.codecs import DecodeError
from stream_app.codecs.avro import AvroDecoder, RecordReader, SchemaResolver, encode_confluent, load_schema
from stream_app.codecs.json import JsonDecoder
from stream_app.core.decimals import NotExact
from stream_app.core.records import RawRecord, SourceRecord
from stream_app.core.structured.pack import CompiledField, FieldSpec
from stream_app.core.structured.project import InvalidRecord, check_value, field_checker
from stream_app.core.template import AssemblyError, TemplateAssembler
from stream_app.core.windows import FileCut, FileKey
from stream_app.resources import AVRO_DIR
from stream_app.tools.demo import matched_records
from tests.core.test_structured import PACKS, assembler_for

SCHEMA_PATH = str(AVRO_DIR / "matched_record.avsc")
AVRO = AvroDecoder(SchemaResolver({1: SCHEMA_PATH}), "matched_at", 100_000)
JSON = JsonDecoder("matched_at", ["amount"], 100_000)
BASE = next(matched_records(1, seed=2))
VALID = encode_confluent(1, load_schema(SCHEMA_PATH), BASE)
KEY = FileKey("t", 0, 0, 3_600_000)

values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=30)
    | st.decimals(allow_nan=False, allow_infinity=False, places=3)
    | st.datetimes(timezones=st.just(UTC)) | st.floats(allow_nan=False),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8,
)
records = st.fixed_dictionaries({}, optional={name: values for name in BASE}).map(lambda d: {**BASE, **d})


def raw(value: bytes) -> RawRecord:
    return RawRecord("t", 0, 1, None, None, value)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_random_bytes_only_ever_raise_decode_errors(data):
    for decoder in (AVRO, JSON):
        try:
            decoder.decode(raw(data))
        except DecodeError:
            pass


@settings(max_examples=300, deadline=None)
@given(st.integers(0, len(VALID) - 1), st.binary(min_size=1, max_size=8))
@example(position=60, garbage=b"\x00\x80\x80")  # a timestamp beyond year 9999 (mypyc's shared handler name)
def test_corrupted_avro_only_ever_raises_decode_errors(position, garbage):
    try:
        AVRO.decode(raw(VALID[:position] + garbage + VALID[position + len(garbage):]))
    except DecodeError:
        pass


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records)
def test_random_records_through_every_assembler(value):
    template = TemplateAssembler("H|{{ totals.amount }}\n", "D|{{ record.merchant_name | pad(30) }}|"
                                 "{{ record.amount | money }}|{{ record.matched_at | ts }}\n", "T\n",
                                 "F_{{ part }}.txt")
    record = SourceRecord("t", 0, 0, 0, value)
    try:
        _ = template.assemble(FileCut.of(KEY, 0, [record])).body
    except AssemblyError:
        pass
    for schema_id in PACKS:
        assembler = assembler_for(schema_id)
        try:
            row = assembler.project(value)
        except InvalidRecord:
            continue
        try:
            _ = assembler.assemble(FileCut.of(KEY, 0, [SourceRecord("t", 0, 0, 0, value, row)])).body
        except AssemblyError:
            pass


def test_the_strategies_reach_valid_records_too():
    assert assembler_for("pcs-clearing").project(BASE)["Amount"] == BASE["amount"].quantize(Decimal("0.01"))
    assert isinstance(BASE["matched_at"], datetime)


LOGICAL_SCHEMA = {"type": "record", "name": "Logical", "fields": [
    {"name": "ts_ms", "type": {"type": "long", "logicalType": "timestamp-millis"}},
    {"name": "ts_us", "type": {"type": "long", "logicalType": "timestamp-micros"}},
    {"name": "opt_ts", "type": ["null", {"type": "long", "logicalType": "timestamp-millis"}], "default": None},
    {"name": "amount", "type": {"type": "bytes", "logicalType": "decimal", "precision": 18, "scale": 2}},
    {"name": "narrow", "type": {"type": "bytes", "logicalType": "decimal", "precision": 4, "scale": 3}},
    {"name": "opt_amount", "type": [{"type": "bytes", "logicalType": "decimal", "precision": 9}, "null"]},
    {"name": "nested", "type": {"type": "record", "name": "Inner", "fields": [
        {"name": "at", "type": {"type": "long", "logicalType": "timestamp-millis"}}]}},
]}
# The same bytes seen without logical types: any long, any bytes (decimals beyond their precision too).
PLAIN_SCHEMA = fastavro.parse_schema({**LOGICAL_SCHEMA, "name": "Plain", "fields": [
    {"name": "ts_ms", "type": "long"}, {"name": "ts_us", "type": "long"}, {"name": "opt_ts", "type": ["null", "long"]},
    {"name": "amount", "type": "bytes"}, {"name": "narrow", "type": "bytes"},
    {"name": "opt_amount", "type": ["bytes", "null"]},
    {"name": "nested", "type": {"type": "record", "name": "PlainInner", "fields": [{"name": "at", "type": "long"}]}},
]})
longs = st.integers(-(2**63), 2**63 - 1) | st.integers(-(10**15), 10**15)


@settings(max_examples=400, deadline=None)
@given(st.fixed_dictionaries({
    "ts_ms": longs, "ts_us": longs, "opt_ts": st.none() | longs, "amount": st.binary(max_size=12),
    "narrow": st.binary(max_size=4), "opt_amount": st.none() | st.binary(max_size=9),
    "nested": st.fixed_dictionaries({"at": longs})}))
def test_record_reader_converts_logical_types_exactly_as_fastavro_does(plain):
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, PLAIN_SCHEMA, plain)
    data = buf.getvalue()
    try:
        expected = fastavro.schemaless_reader(io.BytesIO(data), fastavro.parse_schema(LOGICAL_SCHEMA), None)
    except Exception as exc:  # e.g. a timestamp beyond year 9999: the reader must fail as well
        with pytest.raises(type(exc)):
            RecordReader(LOGICAL_SCHEMA).read(io.BytesIO(data))
        return
    reader = RecordReader(LOGICAL_SCHEMA)
    try:
        got, millis = reader.read(io.BytesIO(data), "ts_ms")
    except NotExact:
        # fastavro rounds a coefficient beyond the schema's precision; the reader refuses it
        precisions = {"amount": 18, "narrow": 4, "opt_amount": 9}
        assert any(plain[name] is not None and len(str(abs(int.from_bytes(plain[name], "big", signed=True)))) > digits
                   for name, digits in precisions.items())
        return
    assert millis == plain["ts_ms"]  # the event time, without a round trip through datetime
    assert reader.read(io.BytesIO(data), "ts_us")[1] is None  # only timestamp-millis is epoch ms as is
    assert got == expected
    # Equal is not enough for money: same digits and exponent, same types, same time zone.
    assert {k: (type(v), str(v)) for k, v in got.items()} == {k: (type(v), str(v)) for k, v in expected.items()}


# A field's prepared checker must accept, coerce and refuse exactly as the full rules do.
checked_fields = st.sampled_from([
    FieldSpec(name="S", expr="s", type="string", enum=["00", "01", "", "LONGER"], maxLength=2),
    FieldSpec(name="S", expr="s", type="string", enum=["VISA", "MC"], regex="[A-Z]{4}", required=False),
    FieldSpec(name="D", expr="d", type="decimal", scale=2, min=Decimal("0.01"), max=Decimal("999.99")),
    FieldSpec(name="D", expr="d", type="decimal", required=False),
    FieldSpec(name="D", expr="d", type="decimal", enum=["1.00"]),
    FieldSpec(name="T", expr="t", type="datetime"),
    FieldSpec(name="T", expr="t", type="datetime", required=False),
    FieldSpec(name="I", expr="i", type="int", min=Decimal(0)),
])
checked_values = st.one_of(
    st.none(), st.text(max_size=6), st.sampled_from(["00", "01", "LONGER", "VISA", "MC", "1.00"]),
    st.decimals(places=3, min_value=-2000, max_value=2000), st.decimals(allow_nan=True, allow_infinity=True),
    st.integers(-5, 5), st.booleans(), st.datetimes(), st.datetimes(timezones=st.just(UTC)),
    st.dates(),
)


def _outcome(check, value):
    try:
        result = check(value)
    except InvalidRecord as exc:
        return ("invalid", exc.violation)
    except Exception as exc:  # noqa: BLE001 - the same exception type either way is the point
        return ("raised", type(exc))
    return ("value", type(result), str(result) if not isinstance(result, Decimal) or result.is_finite() else "nan")


@settings(max_examples=600, deadline=None)
@given(checked_fields, checked_values)
def test_a_prepared_field_check_decides_as_the_full_rules(spec, value):
    field = CompiledField(spec, lambda ctx: None, set())
    assert _outcome(field_checker(field), value) == _outcome(lambda v: check_value(field, v), value)
