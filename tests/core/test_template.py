"""Template mode: sandbox, strict variables, safe file names, exact decimal totals, determinism."""

from __future__ import annotations

from decimal import Decimal

import pytest

from stream_app.core.naming import UnsafeFileName, check_file_name
from stream_app.core.records import SourceRecord
from stream_app.core.template import AssemblyError, TemplateAssembler
from stream_app.core.windows import FileCut, FileKey

KEY = FileKey("matched", 2, 1_772_409_600_000, 1_772_431_200_000)


def assembler(**overrides) -> TemplateAssembler:
    templates = {
        "header": "H|{{ window_start | ts }}|{{ part }}\n",
        "record": "D|{{ seq }}|{{ record.id }}|{{ record.amount | money }}\n",
        "footer": "T|{{ totals.count }}|{{ totals.amount | money }}\n",
        "file_name": "CLR_{{ window_start | ts('%Y%m%d%H') }}_{{ partition }}_{{ part }}.txt",
    }
    templates.update(overrides)
    return TemplateAssembler(templates["header"], templates["record"], templates["footer"], templates["file_name"])


def cut(values, part=0) -> FileCut:
    records = [SourceRecord("matched", 2, i, KEY.window_start_ms, v) for i, v in enumerate(values)]
    return FileCut.of(KEY, part, records)


def test_renders_only_what_the_templates_produce():
    out = assembler().assemble(cut([{"id": "a", "amount": Decimal("1.50")}, {"id": "b", "amount": Decimal("2")}]))
    assert out.name == "CLR_2026030200_2_0.txt"
    assert out.body == b"H|2026-03-02T00:00:00Z|0\nD|1|a|1.50\nD|2|b|2.00\nT|2|3.50\n"


def test_totals_are_exact_where_floats_are_not():
    values = [{"id": str(i), "amount": Decimal("0.10"), "currency": "EUR"} for i in range(10)]
    values.append({"id": "x", "amount": Decimal("0.20"), "currency": "USD"})
    body = assembler(footer="{{ totals.count }}|{{ totals.by_currency['EUR'].amount }}|"
                            "{{ totals.by_currency['USD'].count }}").assemble(cut(values)).body
    assert body.endswith(b"11|1.00|1")
    assert sum([0.1] * 10) != 1.0  # what a float sum would have printed
    single = assembler(footer="{{ totals.amount }}").assemble(cut(values[:10])).body
    assert single.endswith(b"1.00")


def test_totals_never_add_up_currencies():
    values = [{"id": "a", "amount": Decimal("1.00"), "currency": "EUR"},
              {"id": "b", "amount": Decimal("1.00"), "currency": "USD"}]
    with pytest.raises(AssemblyError, match="different currencies"):
        assembler(footer="{{ totals.amount }}").assemble(cut(values))


def test_refunds_and_reversals_count_negative_with_a_debit_credit_indicator():
    values = [{"id": "a", "amount": Decimal("10.00"), "currency": "EUR", "transaction_type": "PURCHASE"},
              {"id": "b", "amount": Decimal("25.50"), "currency": "EUR", "transaction_type": "REFUND"},
              {"id": "c", "amount": Decimal("5.00"), "currency": "USD", "transaction_type": "PURCHASE"},
              {"id": "d", "amount": Decimal("1.25"), "currency": "USD", "transaction_type": "REVERSAL"}]
    footer = ("{% for c, t in totals.by_currency.items() %}{{ c }}|{{ t.count }}|{{ t.credit }}|{{ t.debit }}|"
              "{{ t.net }}|{{ t.indicator }};{% endfor %}")
    a = TemplateAssembler("", "", footer, "f_{{ part }}.txt", negative=("transaction_type", frozenset({"REFUND", "REVERSAL"})))
    body = a.assemble(cut(values)).body.decode()
    assert body == "EUR|2|10.00|25.50|15.50|D;USD|2|5.00|1.25|3.75|C;"


def test_float_money_is_rejected():
    with pytest.raises(AssemblyError) as err:
        assembler().assemble(cut([{"id": "a", "amount": 1.5}]))
    assert err.value.error_class == "BAD_AMOUNT"


@pytest.mark.parametrize("escape", [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ record.__class__ }}",
    "{{ cycler.__init__.__globals__.os }}",
    "{{ range.__self__ }}",
])
def test_sandbox_blocks_template_escapes(escape):
    with pytest.raises(AssemblyError) as err:
        assembler(record=escape).assemble(cut([{"id": "a", "amount": Decimal(1)}]))
    assert "recordTemplate" in str(err.value)


def test_record_fields_win_over_dict_methods_and_the_sandbox_still_holds():
    values = [{"id": "a", "amount": Decimal(1), "items": "3", "keys": "k"}, {"id": "b", "amount": Decimal(2)}]
    body = assembler(record="{{ record.items if record.keys is string else record.items() | list | length }}\n",
                     footer="").assemble(cut(values)).body
    assert body.splitlines()[1:] == [b"3", b"2"]  # a field named 'items'; then dict.items()
    with pytest.raises(AssemblyError):  # a key that looks like an escape is only data; the method is not
        assembler(record="{{ record.get.__globals__ }}").assemble(cut([{"id": "a", "amount": Decimal(1)}]))


def test_totals_by_currency_take_any_value_once_as_text():
    values = [{"id": "a", "amount": Decimal("1"), "currency": c}
              for c in ("EUR", None, "EUR", ["x"], ["x"], True, 1, "1")]
    totals = assembler(footer="{% for c, t in totals.by_currency.items() %}{{ c }}={{ t.count }};{% endfor %}",
                       record="").assemble(cut(values)).body
    assert totals.endswith(b"1=2;EUR=2;None=1;True=1;['x']=2;")


@pytest.mark.parametrize("places", range(0, 10))
def test_money_is_plain_notation_at_every_scale(places):
    from stream_app.core.template import filter_money

    for text in ("0", "-0.0000000001", "1E+5", "123456789.987654321", "0.000000005", "-12.5", "1E-20"):
        value = Decimal(text)
        expected = format(value.quantize(Decimal(1).scaleb(-places), rounding="ROUND_HALF_EVEN"), "f")
        assert filter_money(value, places) == expected
        assert "E" not in filter_money(value, places)


def test_undefined_variables_are_errors_not_blanks():
    with pytest.raises(AssemblyError, match="amout"):
        assembler(record="{{ record.amout }}").assemble(cut([{"id": "a", "amount": Decimal(1)}]))
    with pytest.raises(AssemblyError, match="now"):
        assembler(file_name="F_{{ now }}.txt").file_name(KEY, 0, 1)


@pytest.mark.parametrize("template", [
    "../{{ part }}.txt", "/etc/{{ part }}", "a/b_{{ part }}.txt", "{{ '..' }}", "x\\{{ part }}",
    "{{ part }}.tmp", ".hidden{{ part }}", "manifest.jsonl", "",
])
def test_file_names_cannot_leave_the_target_directory(template):
    with pytest.raises(AssemblyError) as err:
        assembler(file_name=template).file_name(KEY, 0, 1)
    assert err.value.error_class in ("UNSAFE_FILE_NAME",)


def test_check_file_name_accepts_plain_names():
    assert check_file_name("CLR_20260302_P1_001.txt") == "CLR_20260302_P1_001.txt"
    with pytest.raises(UnsafeFileName):
        check_file_name("a\x00b")


def test_same_records_same_bytes():
    values = [{"id": str(i), "amount": Decimal(i).scaleb(-2)} for i in range(50)]
    a, b = assembler().assemble(cut(values, 3)), assembler().assemble(cut(values, 3))
    assert (a.name, a.body) == (b.name, b.body)


def test_record_value_is_never_in_error_messages():
    secret = "4111111111111111"
    with pytest.raises(AssemblyError) as err:
        assembler(record="{{ record.pan | int(base=2) + [] }}").assemble(cut([{"id": "a", "pan": secret,
                                                                                "amount": Decimal(1)}]))
    assert secret not in str(err.value)
    with pytest.raises(AssemblyError) as err:
        assembler(record="{{ record.pan | pad(4) }}").assemble(cut([{"id": "a", "pan": secret, "amount": Decimal(1)}]))
    assert secret not in str(err.value) and "width 4" in str(err.value)


def _per_record_body(asm: TemplateAssembler, values) -> bytes:
    """The body as one render per record would give it (the batch path switched off)."""
    asm._batch = None
    return asm.assemble(cut(values)).body


@pytest.mark.parametrize("record", [
    "D|{{ seq }}|{{ record.id }}|{{ record.amount | money }}\n",
    "{% set n = record.id ~ '-' %}{{ n }}{{ source.offset }}{% if seq % 2 %}odd{% endif %}  \n",
    "{% macro cell(v) %}[{{ v }}]{% endmacro %}{{ cell(record.id) }}{{ cell(seq) -}}\n\n",
    "{{ record.id }}",  # no newline at all
])
def test_batch_rendering_gives_the_bytes_of_one_render_per_record(record):
    values = [{"id": f"r{i}", "amount": Decimal(i)} for i in range(1234)]  # several batches
    batched = assembler(record=record)
    assert batched._batch is not None
    assert batched.assemble(cut(values)).body == _per_record_body(assembler(record=record), values)


def test_a_record_template_using_loop_is_rendered_per_record_and_fails_as_undefined():
    asm = assembler(record="{{ loop.index }}\n")
    assert asm._batch is None
    with pytest.raises(AssemblyError, match="loop"):
        asm.assemble(cut([{"id": "a", "amount": Decimal(1)}]))


def test_a_failing_record_inside_a_batch_is_named_by_its_offset():
    values = [{"id": str(i), "amount": Decimal(1)} for i in range(900)]
    values[613] = {"amount": Decimal(1)}  # no id: undefined under StrictUndefined
    with pytest.raises(AssemblyError) as err:
        assembler().assemble(cut(values))
    assert err.value.source == ("matched", 2, 613) and "@613" in str(err.value)


@pytest.mark.parametrize("record, header, expected", [
    ("{{ record.id }}|{{ record['amount'] | money }}|{{ record.a.b }}\n", "HDR {{ totals.count }}",
     {"id", "amount", "a"}),
    ("{{ record | tojson }}", "", None),  # the record whole
    ("{% set r = record %}{{ r.id }}", "", None),
    ("{{ record[name] }}", "", None),
    ("{% for k in record %}{{ k }}{% endfor %}", "", None),
    ("{{ record.get('id') }}", "", {"get"}),  # no such field: the decoder builds all (test_carried.py)
    ("{{ record.id }}", "{% for r in records %}{{ r.x }}{% endfor %}", None),  # the header reads records
])
def test_the_fields_a_file_reads_are_found_in_its_templates(record, header, expected):
    asm = assembler(record=record, header=header, footer="")
    totals = {"amount", "currency"}
    assert asm.fields_read() == (None if expected is None else frozenset(expected | totals))


def test_records_built_with_only_the_fields_read_render_the_same_bytes():
    """What CarriedDecoder(fields=fields_read()) gives a file renders as the whole records do."""
    values = [{"id": f"r{i}", "amount": Decimal(i) / 4, "currency": "EUR" if i % 3 else "USD", "pan": "4111",
               "name": "x" * i, "type": "REFUND" if i % 5 == 0 else "SALE"} for i in range(40)]
    asm = TemplateAssembler("HDR|{{ record_count }}\n",
                            "{{ seq }}|{{ record.id }}|{{ record.amount | money }}|{{ record['currency'] }}\n",
                            "{% for c, t in totals.by_currency | dictsort %}{{ c }}={{ t.amount }}{{ t.indicator }};"
                            "{% endfor %}\n", "F_{{ part }}.txt", negative=("type", frozenset({"REFUND"})))
    fields = asm.fields_read()
    assert fields == {"id", "amount", "currency", "type"}
    projected = [{k: v for k, v in value.items() if k in fields} for value in values]
    assert asm.assemble(cut(projected)).body == asm.assemble(cut(values)).body
