"""Money is exact or an error: one exponent rule at decode, exact totals with Inexact trapped."""

from __future__ import annotations

from decimal import Context, Decimal

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_app.codecs import DecodeError
from stream_app.codecs.avro import RecordReader, convert_plain
from stream_app.codecs.json import JsonDecoder
from stream_app.core.decimals import MAX_DIGITS, NotExact, exact_decimal
from stream_app.core.records import RawRecord, SourceRecord
from stream_app.core.template import AssemblyError, TemplateAssembler, TotalsAccumulator
from stream_app.core.windows import FileCut, FileKey

WIDE = Context(prec=200)  # the reference arithmetic: far wider than anything summed here


def decode(amount) -> SourceRecord:
    payload = orjson.dumps({"matched_at": 1772409600000, "amount": amount, "currency": "EUR"})
    return JsonDecoder("matched_at", ["amount"], 1 << 20).decode(RawRecord("in", 0, 0, None, None, payload))


def render(values: list[dict], record: str = "{{ record.amount }}\n",
           footer: str = "{{ totals.by_currency.EUR.amount }}|{{ totals.amount | money(2) }}\n") -> str:
    assembler = TemplateAssembler("", record, footer, "f_{{ part }}.txt")
    records = [SourceRecord("in", 0, i, 0, v) for i, v in enumerate(values)]
    return assembler.assemble(FileCut.of(FileKey("in", 0, 0, 1), 0, records)).body.decode()


@pytest.mark.parametrize("text, expected", [
    ("1E+3", "1000"), ("1.5E+2", "150"), ("-2E+1", "-20"), ("1.50", "1.50"), ("1E-7", "1E-7"), ("0", "0")])
def test_exponent_notation_is_normalised_at_decode(text, expected):
    amount = decode(text).value["amount"]
    assert str(amount) == expected and amount.as_tuple().exponent <= 0


def test_lines_and_totals_write_the_same_plain_number():
    values = [decode(text).value for text in ("1E+3", "0.0000001", "2.5E+1")]
    assert render(values) == "1000\n0.0000001\n25\n1025.0000001|1025.00\n"


@pytest.mark.parametrize("text, reason", [
    ("NaN", "is not a finite decimal number"), ("-Infinity", "is not a finite decimal number"),
    ("1" * (MAX_DIGITS + 1), f"has more than {MAX_DIGITS} digits"),
    ("0." + "1" * MAX_DIGITS, f"has more than {MAX_DIGITS} digits"),
    ("1E+38", f"has more than {MAX_DIGITS} digits"), ("1E+1000000", f"has more than {MAX_DIGITS} digits"),
    ("12,50", "is not a decimal number")])
def test_amounts_that_cannot_be_exact_are_bad_decimal_naming_the_field(text, reason):
    with pytest.raises(DecodeError) as err:
        decode(text)
    assert err.value.reason == "BAD_DECIMAL" and err.value.detail == f"field 'amount' {reason}"


def test_twenty_eight_fraction_digits_stay_exact_in_the_total():
    tiny, big = "0." + "0" * 27 + "1", "1000000.25"
    values = [decode(tiny).value, decode(big).value]
    body = render(values, footer="{{ totals.amount }}\n")
    assert body.splitlines()[-1] == "1000000.2500000000000000000000000001"


def test_a_total_that_would_round_is_an_error_naming_the_field_never_a_rounded_number():
    totals = TotalsAccumulator("amount", "currency")
    totals.add({"amount": Decimal("9" * 60), "currency": "EUR"})
    with pytest.raises(AssemblyError) as err:
        totals.add({"amount": Decimal("0.1"), "currency": "EUR"})
    assert err.value.error_class == "INEXACT_TOTAL" and "'amount'" in str(err.value)


def test_an_avro_decimal_beyond_its_schema_precision_is_bad_decimal():
    schema = {"type": "record", "name": "R", "fields": [
        {"name": "amount", "type": {"type": "bytes", "logicalType": "decimal", "precision": 4, "scale": 2}}]}
    reader = RecordReader(schema)
    assert convert_plain(1, reader, {"amount": (1234).to_bytes(2, "big", signed=True)}, None) is None
    with pytest.raises(DecodeError) as err:
        convert_plain(1, reader, {"amount": (123456).to_bytes(3, "big", signed=True)}, None)
    assert err.value.reason == "BAD_DECIMAL" and "'amount'" in str(err.value)


amounts = st.decimals(allow_nan=False, allow_infinity=False, min_value=Decimal("-1E+20"), max_value=Decimal("1E+20"),
                      places=None).filter(lambda d: len(d.as_tuple().digits) - min(d.as_tuple().exponent, 0) <= 30)


@settings(max_examples=300, deadline=None)
@given(st.lists(amounts, min_size=1, max_size=20))
def test_totals_are_the_exact_sum_or_the_record_is_refused(values):
    decoded = []
    for value in values:
        try:
            decoded.append(exact_decimal(format(value, "f") if value.as_tuple().exponent <= 0 else str(value)))
        except NotExact:
            continue  # refused with the field named: never a rounded value
    if not decoded:
        return
    totals = TotalsAccumulator("amount", "currency")
    for amount in decoded:
        totals.add({"amount": amount, "currency": "EUR"})
    exact = Decimal(0)
    for amount in decoded:
        exact = WIDE.add(exact, amount)
    result = totals.result()
    assert result.amount == exact and result.by_currency["EUR"].amount == exact
    assert WIDE.subtract(result.by_currency["EUR"].credit, result.by_currency["EUR"].debit) == exact


def decode_literal(literal: str, number_amounts: str = "exact") -> SourceRecord:
    """A record whose amount is the JSON number ``literal`` exactly as written on the wire."""
    payload = b'{"matched_at": 1772409600000, "amount": ' + literal.encode() + b', "currency": "EUR"}'
    decoder = JsonDecoder("matched_at", ["amount"], 1 << 20, number_amounts=number_amounts)  # type: ignore[arg-type]
    return decoder.decode(RawRecord("in", 0, 0, None, None, payload))


@pytest.mark.parametrize("literal, expected", [
    ("1234567890123.45", "1234567890123.45"),                        # 15 significant digits
    ("123456789012345.6", "123456789012345.6"),                      # 16
    ("12345678901234567", "12345678901234567"),                      # 17, an integer
    ("123456789012345678.99", "123456789012345678.99"),              # 20: a double gives ...680
    ("1234.5678901234567890123456789", "1234.5678901234567890123456789"),
    ("0.10000000000000000001", "0.10000000000000000001"),            # a double gives 0.1
    ("1234567890123456789012345678901234.5678", "1234567890123456789012345678901234.5678"),  # 38
    ("-99999999999999999999", "-99999999999999999999"),              # beyond 64-bit integers
    ("1E+3", "1000"), ("1.5e2", "150"), ("2.50E-3", "0.00250"), ("0", "0"), ("-1.00", "-1.00")])
def test_a_json_number_amount_keeps_the_literal_that_was_sent(literal, expected):
    amount = decode_literal(literal).value["amount"]
    assert isinstance(amount, Decimal) and str(amount) == expected
    assert render([{"amount": amount, "currency": "EUR"}], footer="{{ totals.amount }}\n").splitlines()[-1] == expected


def test_a_json_number_of_more_than_38_digits_is_bad_decimal_never_rounded():
    with pytest.raises(DecodeError) as err:
        decode_literal("1" * 39)
    assert err.value.reason == "BAD_DECIMAL" and "more than 38 digits" in err.value.detail


def test_json_number_amounts_reject_makes_every_number_a_dead_letter_and_strings_still_pass():
    with pytest.raises(DecodeError) as err:
        decode_literal("12.5", "reject")
    assert err.value.reason == "NUMBER_AMOUNT" and "'amount'" in err.value.detail
    assert str(decode_literal('"12.5"', "reject").value["amount"]) == "12.5"


def test_a_json_amount_that_is_an_object_or_list_is_bad_decimal():
    for literal in ('{"v": 1}', "[1]"):
        with pytest.raises(DecodeError) as err:
            decode_literal(literal)
        assert err.value.reason == "BAD_DECIMAL"


@settings(max_examples=400, deadline=None)
@given(st.decimals(allow_nan=False, allow_infinity=False, places=None), st.integers(min_value=0, max_value=6))
def test_quantize_is_decimal_quantize_half_even_at_any_size(value, places):
    """``quantize`` returns a value already at ``places`` decimals as it is; what it gives is
    what Decimal's own quantize gives in a context wide enough for the result, digit for digit."""
    from decimal import ROUND_HALF_EVEN

    from stream_app.core.decimals import quantize

    wide = Context(prec=max(28, value.adjusted() + places + 2))
    expected = value.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_EVEN, context=wide)
    got = quantize(value, places)
    assert got.as_tuple() == expected.as_tuple()


def test_quantize_keeps_a_value_of_its_places_and_rounds_others():
    from stream_app.core.decimals import quantize

    for text, places, expected in [("190.88", 2, "190.88"), ("-0.00", 2, "-0.00"), ("1.5", 2, "1.50"),
                                   ("1.500", 2, "1.50"), ("2.345", 2, "2.34"), ("2.355", 2, "2.36"), ("7", 0, "7")]:
        assert str(quantize(Decimal(text), places)) == expected
