"""Structured mode: golden files per pack, preflight per rule kind, validation, XSD, exact totals."""

from __future__ import annotations

import os
import shutil
from decimal import Decimal
from pathlib import Path

import pytest
import yaml

from stream_app.config import ConfigError, parse_config
from stream_app.core.assembly import FileVariables
from stream_app.core.records import SourceRecord
from stream_app.core.spool import MemorySpool
from stream_app.core.structured.assembler import StructuredAssembler
from stream_app.core.structured.pack import PackError, load_pack, pack_path
from stream_app.core.structured.project import InvalidRecord
from stream_app.core.template import AssemblyError
from stream_app.core.windows import FileCut, FileKey
from stream_app.resources import SCHEMAS_DIR
from stream_app.tools.demo import DEMO_START, matched_records
from stream_app.tools.preflight import run_preflight
from tests.helpers import config_dict

GOLDEN = Path(__file__).parent / "golden"
SIX_H = 6 * 3600 * 1000
START_MS = int(DEMO_START.timestamp() * 1000)
PACKS = {"pcs-clearing": "xml", "settlement-report": "csv", "fixed-clearing": "dat", "net-positions": "csv"}


def assembler_for(schema_id: str, schemas_dir: Path = SCHEMAS_DIR) -> StructuredAssembler:
    pack = load_pack(pack_path(schemas_dir, schema_id, "1.0.0"))
    return StructuredAssembler(pack, "F_{{ partition }}_{{ part }}_{{ window_start | ts('%Y%m%d%H') }}.out")


def cut_of(assembler: StructuredAssembler, values: list[dict]) -> FileCut:
    records = [SourceRecord("matched", 0, i, START_MS, v, assembler.project(v)) for i, v in enumerate(values)]
    return FileCut.of(FileKey("matched", 0, START_MS, START_MS + SIX_H), 0, records, "watermark", True)


@pytest.mark.parametrize("schema_id", sorted(PACKS))
def test_golden_file(schema_id):
    assembler = assembler_for(schema_id)
    out = assembler.assemble(cut_of(assembler, list(matched_records(30, seed=99, span_hours=5))))
    golden = GOLDEN / f"{schema_id}.{PACKS[schema_id]}"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_bytes(out.body)
    assert out.body == golden.read_bytes()
    assert out.name == "F_0_0_2026030200.out"


def test_xml_output_is_valid_against_the_pack_xsd_and_declares_its_encoding():
    body = (GOLDEN / "pcs-clearing.xml").read_bytes()
    assert body.startswith(b"<?xml version='1.0' encoding='UTF-8'?>\n<ClearingFile xmlns=\"urn:example:pcs:clearing:1\"")


def test_fixed_width_lines_have_the_declared_width():
    lines = (GOLDEN / "fixed-clearing.dat").read_bytes().split(b"\r\n")
    assert lines[-1] == b"" and {len(line) for line in lines[:-1]} == {120}
    assert lines[0][:1] == b"H" and lines[1][:1] == b"D" and lines[-2][:1] == b"T"


def test_totals_are_decimal_exact():
    assembler = assembler_for("settlement-report")
    base = next(matched_records(1, seed=1))
    values = [{**base, "amount": Decimal("0.10"), "transaction_type": "PURCHASE"} for _ in range(10)]
    values += [{**base, "amount": Decimal("0.20"), "transaction_type": "PURCHASE"},
               {**base, "amount": Decimal("0.10"), "transaction_type": "REFUND"}]
    body = assembler.assemble(cut_of(assembler, values)).body
    assert body.endswith(b"TOTAL,12,1.10\r\n")
    assert sum([0.1] * 10) + 0.2 - 0.1 != 1.1  # a float total would be off


def test_net_positions_net_opposite_flows():
    assembler = assembler_for("net-positions")
    base = next(matched_records(1, seed=1))
    a_to_b = {**base, "issuer_id": "BANK-A", "acquirer_id": "BANK-B", "currency": "EUR",
              "transaction_type": "PURCHASE", "amount": Decimal("100.00")}
    b_to_a = {**a_to_b, "transaction_type": "REFUND", "amount": Decimal("30.55")}
    other_ccy = {**a_to_b, "currency": "GBP", "amount": Decimal("5.00")}
    body = assembler.assemble(cut_of(assembler, [a_to_b, b_to_a, a_to_b, other_ccy])).body.decode()
    assert body.splitlines() == [
        "bank_a;bank_b;currency;transfers;gross_debit;gross_credit;net_amount",
        "BANK-A;BANK-B;EUR;3;200.00;30.55;-169.45",
        "BANK-A;BANK-B;GBP;1;5.00;0.00;-5.00",
        "TOTAL;4",
    ]


def test_scale_rule_rejects_extra_decimal_places():
    with pytest.raises(InvalidRecord, match="'settlement_amount' violates rule scale"):
        assembler_for("settlement-report").project({**next(matched_records(1, seed=1)), "amount": Decimal("0.001")})


@pytest.mark.parametrize("change, rule", [
    ({"masked_pan": "4111111111111111"}, "'Pan' violates rule regex"),
    ({"scheme": "AMEX"}, "'Scheme' violates rule enum"),
    ({"arn": None}, "'Arn' violates rule required"),
    ({"amount": Decimal("0")}, "'Amount' violates rule min"),
    ({"merchant_name": "X" * 30}, "'MerchantName' violates rule maxLength"),
    ({"transaction_type": "CHARGEBACK"}, "'TxnCode' violates rule expression"),
    ({"matched_at": "2026-03-02"}, "'MatchedAt' violates rule type"),
    ({"merchant_name": "ACME\x01STORE"}, "'MerchantName' violates rule xmlChar"),
])
def test_runtime_validation_names_field_and_rule_but_not_the_value(change, rule):
    assembler = assembler_for("pcs-clearing")
    value = {**next(matched_records(1, seed=1)), **change}
    with pytest.raises(InvalidRecord) as err:
        assembler.project(value)
    assert rule in str(err.value)
    for v in change.values():
        if isinstance(v, str) and len(v) > 4:
            assert v not in str(err.value)


def test_xsd_violation_is_caught_before_the_file_is_written(tmp_path):
    shutil.copytree(SCHEMAS_DIR / "pcs-clearing", tmp_path / "pcs-clearing")
    xsd = tmp_path / "pcs-clearing" / "1.0.0" / "clearing.xsd"
    xsd.write_text(xsd.read_text().replace('<xs:pattern value="[A-Z]{3}"/>', '<xs:pattern value="[A-Z]{2}"/>'))
    assembler = assembler_for("pcs-clearing", tmp_path)
    with pytest.raises(AssemblyError) as err:
        assembler.assemble(cut_of(assembler, list(matched_records(3, seed=1))))
    assert err.value.error_class == "XSD_INVALID" and "Currency" in str(err.value)
    assert "EUR" not in str(err.value)


def _broken_pack(tmp_path: Path, schema_id: str, edit) -> Path:
    shutil.copytree(SCHEMAS_DIR / schema_id, tmp_path / schema_id)
    path = pack_path(tmp_path, schema_id, "1.0.0")
    data = yaml.safe_load(path.read_text())
    edit(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _set(data, keys, value):
    for k in keys[:-1]:
        data = data[k]
    data[keys[-1]] = value


@pytest.mark.parametrize("schema_id, edit, expected", [
    ("pcs-clearing", lambda d: d["fields"][0].update(regx="x"), "fields.0.regx: [unknown-key]"),
    ("pcs-clearing", lambda d: d["fields"][1].update(expr="reverse(arn)"), "fields.Arn: [unknown-function]"),
    ("pcs-clearing", lambda d: d["fields"][1].update(expr="__import__('os')"), "fields.Arn: [unknown-function]"),
    ("pcs-clearing", lambda d: d["fields"][1].update(expr="arn + 'x'"), "fields.Arn: [expression]"),
    ("pcs-clearing", lambda d: d["fields"][1].update(regex="[0-9"), "fields.Arn: [regex]"),
    ("pcs-clearing", lambda d: d["aggregates"].append({"name": "s", "fn": "sum", "field": "Currency"}),
     "aggregates.s: [aggregate-type] sum over non-numeric field 'Currency'"),
    ("pcs-clearing", lambda d: d["aggregates"].append({"name": "s", "fn": "sum", "field": "Amont"}),
     "aggregates.s: [undefined-field]"),
    ("pcs-clearing", lambda d: d["trailer"][1]["fields"].append({"name": "X", "expr": "totalAmont"}),
     "trailer[1].fields.X: [undefined-field]"),
    ("pcs-clearing", lambda d: d["trailer"][0].update(forEach="recordCount"), "trailer[0].forEach: [undefined-aggregate]"),
    ("pcs-clearing", lambda d: d["fields"][3].update(expr="lookup(transaction_type, 'codes')"),
     "fields.TxnCode: [expression]"),
    ("pcs-clearing", lambda d: d["output"].pop("xml"), "output.xml: [formatter-settings]"),
    ("pcs-clearing", lambda d: _set(d, ["output", "xml", "xsd"], "missing.xsd"), "output.xml.xsd: [formatter-settings]"),
    ("fixed-clearing", lambda d: d["fields"][0].pop("width"), "fields.arn: [formatter-settings]"),
    ("settlement-report", lambda d: d["fields"][2].update(scale=2), "fields.scheme: [scale]"),
    ("net-positions", lambda d: d["body"]["fields"].append({"name": "y", "expr": "payer"}),
     "body.fields.y: [undefined-field]"),
    ("net-positions", lambda d: d["body"].update(groupBy=["bank"]), "body.groupBy: [undefined-field]"),
])
def test_preflight_rejects_broken_packs_naming_file_field_and_rule(tmp_path, schema_id, edit, expected):
    path = _broken_pack(tmp_path, schema_id, edit)
    with pytest.raises(PackError) as err:
        load_pack(path)
    assert str(err.value).startswith(str(path)) and expected in str(err.value)


def structured_config(tmp_path: Path, schema_id: str = "pcs-clearing", **worker) -> dict:
    settings = {"headerTemplate": "", "footerTemplate": "", "recordTemplate": None, **worker}
    data = config_dict(tmp_path, mode="structured", schema={"id": schema_id, "version": "1.0.0"},
                       fileNameTemplate="F_{{ partition }}_{{ part }}_{{ window_start | ts('%Y%m%d%H') }}.xml",
                       **settings)
    data["worker"] = {k: v for k, v in data["worker"].items() if v not in ("", None)}
    return data


def test_structured_preflight_passes_for_every_example_pack(tmp_path):
    for schema_id in PACKS:
        checked = run_preflight(parse_config(structured_config(tmp_path, schema_id)))
        assert "every field the pack maps from exists in the input schema" in checked


def test_structured_preflight_errors(tmp_path):
    assert parse_config(structured_config(tmp_path, streamingAppendEnabled=True)).worker.streamingAppendEnabled
    with pytest.raises(ConfigError, match="streamingWindowMs applies only with worker.streamingAppendEnabled"):
        parse_config(structured_config(tmp_path, streamingWindowMs=3_600_000))
    with pytest.raises(ConfigError, match="recordTemplate applies to mode: template only"):
        parse_config(structured_config(tmp_path, recordTemplate="x"))
    with pytest.raises(ConfigError, match=r"worker.schema: .*pack.yaml: cannot read"):
        run_preflight(parse_config(structured_config(tmp_path, "no-such-pack")))
    path = _broken_pack(tmp_path / "schemas", "pcs-clearing", lambda d: d["fields"][1].update(expr="arn_number"))
    data = structured_config(tmp_path)
    data["schemasDir"] = str(tmp_path / "schemas")
    with pytest.raises(ConfigError, match=r"\[undefined-field\] the pack maps from \['arn_number'\]") as err:
        run_preflight(parse_config(data))
    assert str(path) in str(err.value)


@pytest.mark.parametrize("millis", [67_768_036_191_676_796_000, -67_768_036_191_676_796_000])
def test_epoch_millis_beyond_a_datetime_are_an_evaluation_error(millis):
    from stream_app.core.structured.expressions import EvaluationError, compile_expression

    for source in ("to_date(record.at)", "format_datetime(record.at, '%Y')"):
        evaluate, _ = compile_expression(source)
        with pytest.raises(EvaluationError, match="out of range"):
            evaluate({"record": {"at": millis}})


@pytest.mark.parametrize("source, context, expected", [
    ("concat(a)", {"a": "x"}, "x"),
    ("concat(a, b)", {"a": "x", "b": "y"}, "xy"),
    ("concat(a, b, c)", {"a": "x", "b": "y", "c": "z"}, "xyz"),
    ("concat(a, b, c, a)", {"a": "x", "b": "y", "c": "z"}, "xyzx"),
    ("if_(is_in(t, 'REFUND', 'REVERSAL'), 0, a)", {"t": "REFUND", "a": Decimal("1.50")}, 0),
    ("if_(is_in(t, 'REFUND', 'REVERSAL'), 0, a)", {"t": "PURCHASE", "a": Decimal("1.50")}, Decimal("1.50")),
    ("pad_left(a, 5, 'ab')", {"a": "x"}, "pad_left() failed: TypeError"),
    ("least(a, b, c)", {"a": 1, "b": "x", "c": 2}, "least() failed: TypeError"),
    ("least(a, b, c, a)", {"a": 1, "b": "x", "c": 2}, "least() failed: TypeError"),
], ids=str)
def test_calls_of_any_arity_give_their_function_s_result_or_its_evaluation_error(source, context, expected):
    from stream_app.core.structured.expressions import EvaluationError, compile_expression

    evaluate, _ = compile_expression(source)
    try:
        got = evaluate(context)
    except EvaluationError as exc:
        got = str(exc)
    assert got == expected and type(got) is type(expected)


@pytest.mark.parametrize("field", ["Amount", "debit"])
def test_a_decimal_field_s_shortcuts_give_what_the_full_rules_give(field):
    """The checker's shortcuts for ints (the 0 of if_(..., 0, Amount)) and for decimals of exactly
    the field's scale give what check_value gives; any other scale takes the full rule."""
    from stream_app.core.structured.project import check_value, field_checker

    pack = load_pack(pack_path(SCHEMAS_DIR, "pcs-clearing", "1.1.0"))
    (compiled,) = [f for f in pack.fields if f.spec.name == field]
    checker = field_checker(compiled)

    def outcome(check, value):
        try:
            result = check(value)
        except InvalidRecord as exc:
            return ("violation", exc.violation.rule)
        return (type(result).__name__, str(result))

    decimals = [Decimal(text) for text in ("190.88", "0.01", "1.50", "1.5", "1.500", "1.000", "100", "1E+2", "0E-2",
                                           "-0.01", "999999999.99", "1000000000.00", "0.001")]
    for value in [0, 1, -1, 5, 999_999_999, 1_000_000_000, 10 ** 40, -(10 ** 40), True, False, *decimals]:
        assert outcome(checker, value) == outcome(lambda v: check_value(compiled, v), value), value
    assert outcome(checker, 0) == (("Decimal", "0") if field == "debit" else ("violation", "min"))


PARTIES = FileVariables(None, {"sender_id": "BARCGB22XXX", "receiver_id": "ECBFDEFFXXX"})


@pytest.mark.parametrize("schema_id, version, field, check", [
    ("fixed-clearing", "1.1.0", "count", "count"),
    ("net-positions", "1.0.0", "transfers", "sum(transfers)"),
])
def test_a_trailer_that_disagrees_with_its_detail_lines_stops_the_file(tmp_path, schema_id, version, field, check):
    """Trailer checks recount the detail lines as written, apart from the aggregates the trailer
    reads: the shipped packs pass, and a mapping broken on purpose is stopped, naming the field."""
    values = list(matched_records(40, seed=7, span_hours=5))
    shipped = StructuredAssembler(load_pack(pack_path(SCHEMAS_DIR, schema_id, version)), "F_{{ part }}.out", PARTIES)
    shipped.assemble(cut_of(shipped, values))  # the trailer agrees

    def off_by_one(data: dict) -> None:
        for line in data["trailer"]:
            for spec in line["fields"]:
                if spec.get("check") == check:
                    spec["expr"] = "7"  # 40 records: never the count

    shutil.copytree(SCHEMAS_DIR / schema_id, tmp_path / schema_id)
    path = pack_path(tmp_path, schema_id, version)
    data = yaml.safe_load(path.read_text())
    off_by_one(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    broken = StructuredAssembler(load_pack(path), "F_{{ part }}.out", PARTIES)
    with pytest.raises(AssemblyError) as err:
        broken.assemble(cut_of(broken, values))
    assert err.value.error_class == "TRAILER_CHECK_FAILED"
    assert "F_0.out: trailer check failed: trailer[" in str(err.value) and f"field {field} is not the {check}" in str(
        err.value)


def test_a_per_currency_trailer_line_is_recounted_per_currency(tmp_path):
    """fixed-clearing 1.1.0's C lines (one per currency, forEach) check their count against the
    detail lines of that currency: a mapping that miscounts one currency stops the file."""
    values = list(matched_records(60, seed=3, span_hours=5))
    shutil.copytree(SCHEMAS_DIR / "fixed-clearing", tmp_path / "fixed-clearing")
    path = pack_path(tmp_path, "fixed-clearing", "1.1.0")
    data = yaml.safe_load(path.read_text())
    (line,) = [line for line in data["trailer"] if line.get("forEach") == "countByCurrency"]
    (count,) = [spec for spec in line["fields"] if spec["name"] == "count"]
    assert count.get("check") == "count"  # shipped
    count["expr"] = "if_(eq(key, 'EUR'), 1, value)"  # EUR has more than one detail line
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    broken = StructuredAssembler(load_pack(path), "F_{{ part }}.out", PARTIES)
    with pytest.raises(AssemblyError) as err:
        broken.assemble(cut_of(broken, values))
    assert err.value.error_class == "TRAILER_CHECK_FAILED"
    assert "trailer[0] field count is not the count of the detail lines of EUR" in str(err.value)


@pytest.mark.parametrize("edit, expected", [
    (lambda d: d["header"][0]["fields"][0].update(check="count"), "header[0].sender: [check] checks belong to trailer"),
    (lambda d: (d["aggregates"].append({"name": "byCredit", "fn": "count", "groupBy": ["creditMinor"]}),
                d["trailer"][0].update(forEach="byCredit")),
     "trailer[0].fields.count: [check] count per byCredit key: the group field 'creditMinor' is not an output field"),
    (lambda d: d["trailer"][1]["fields"][0].update(check="sum(merchant)"), "trailer[1].fields.count: [check] "
                                                                            "sum(merchant): 'merchant' is not a numeric"),
    (lambda d: d["trailer"][1]["fields"][0].update(check="avg(amountMinor)"), "trailer.1.fields.0.check: [schema]"),
])
def test_a_trailer_check_the_pack_cannot_keep_is_a_pack_error(tmp_path, edit, expected):
    shutil.copytree(SCHEMAS_DIR / "fixed-clearing", tmp_path / "fixed-clearing")
    path = pack_path(tmp_path, "fixed-clearing", "1.1.0")
    data = yaml.safe_load(path.read_text())
    edit(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(PackError) as err:
        load_pack(path)
    assert expected in str(err.value), str(err.value)


@pytest.mark.parametrize("pack_dir", sorted(p.relative_to(SCHEMAS_DIR) for p in SCHEMAS_DIR.glob("*/*") if p.is_dir()),
                         ids=str)
def test_records_built_with_only_the_fields_the_pack_reads_project_the_same(pack_dir):
    """What the file stage's CarriedDecoder builds (pipeline/wiring.py files_read: the pack's
    input names) projects to the rows, and the violations, of the whole records."""
    pack = load_pack(pack_path(SCHEMAS_DIR, *pack_dir.parts))
    asm = StructuredAssembler(pack, "F_{{ part }}.out",
                              FileVariables(None, {"sender_id": "BARCGB22", "receiver_id": "ECBFDEFF"}))
    values = list(matched_records(300, seed=11))
    values += [{**v, "amount": None} for v in values[:20]] + [{**v, "currency": "X"} for v in values[20:40]]

    def outcome(value: dict) -> object:
        try:
            return asm.project(value)
        except InvalidRecord as exc:
            return exc.violation

    read = pack.input_names
    assert read, "the pack reads some input fields"
    for value in values:
        assert outcome({k: v for k, v in value.items() if k in read}) == outcome(value)


# -- deferred detail lines (StructuredAssembler.assemble renders them while the XSD check reads) --

def _eager(assembler: StructuredAssembler, cut: FileCut):
    """The part as written before deferral: each detail line rendered on append."""
    part = assembler.open_part(cut.key, cut.part, MemorySpool())
    for record in cut.records:
        part.append(record)
    return part.finish()


def _outcome(make) -> tuple:
    try:
        made = make()
    except AssemblyError as exc:
        return ("error", exc.error_class, str(exc), exc.source)
    return ("file", made.name, made.body)


def _helper_assembler(min_bytes: int = 64 * 1024) -> StructuredAssembler:
    """pcs-clearing 1.1.0 with its XSD checked in the helper process from ``min_bytes`` on."""
    pack = load_pack(pack_path(SCHEMAS_DIR, "pcs-clearing", "1.1.0"))
    assembler = StructuredAssembler(pack, "F_{{ part }}.xml", PARTIES, xsd_process=True)
    helper = assembler.formatter._xsd_helper  # type: ignore[attr-defined]
    helper._min_bytes = min_bytes
    return assembler


def _close(assembler: StructuredAssembler) -> None:
    helper = getattr(assembler.formatter, "_xsd_helper", None)
    if helper is not None:
        helper.close()


@pytest.mark.parametrize("schema_id", [*sorted(PACKS), "pcs-clearing 1.1.0 (XSD helper)"])
def test_deferred_detail_lines_are_the_bytes_of_lines_rendered_on_append(schema_id):
    assembler = _helper_assembler() if "helper" in schema_id else assembler_for(schema_id)
    try:
        cut = cut_of(assembler, list(matched_records(4000, seed=5, span_hours=5)))
        deferred, eager = _outcome(lambda: assembler.assemble(cut)), _outcome(lambda: _eager(assembler, cut))
        assert deferred[0] == "file" and deferred == eager
    finally:
        _close(assembler)


def test_deferred_detail_lines_are_rendered_while_the_xsd_check_reads_the_document():
    assembler = _helper_assembler()
    rendered = [0]
    write = assembler.write_detail

    def counted(row):
        rendered[0] += 1
        return write(row)

    assembler.write_detail = counted
    helper = assembler.formatter._xsd_helper  # type: ignore[attr-defined]
    check = helper.check
    seen: list[int] = []

    def spy(chunks):
        def read():
            for chunk in chunks():
                seen.append(rendered[0])
                yield chunk
        return check(read)

    helper.check = spy
    try:
        cut = cut_of(assembler, list(matched_records(6000, seed=5, span_hours=5)))
        assembler.assemble(cut)
    finally:
        _close(assembler)
    # the header comes before any line is rendered; then the lines arrive in groups as they are read
    assert seen[0] == 0 and 0 < seen[1] < 6000 and seen[-1] == 6000 and len(set(seen)) >= 3
    assert helper.documents_checked == 1


def _broken_rows(assembler: StructuredAssembler, faults: dict[int, str]) -> FileCut:
    """30 EUR records; per index one fault: a line that cannot be rendered, a record that broke a
    rule (the fail policy carries it), a value the XSD refuses, a total beyond exact digits."""
    from stream_app.core.structured.project import Violation

    values = [{**v, "currency": "EUR"} for v in matched_records(30, seed=3, span_hours=1)]
    cut = cut_of(assembler, values)
    records = list(cut.records)
    for i, fault in faults.items():
        row = dict(records[i].row)
        if fault == "line":
            row["MerchantName"] = "ACME\x01STORE"
        elif fault == "xsd":
            row["Currency"] = "EURO"
        elif fault == "total":
            row["signed"] = Decimal("1E+70")
        records[i] = SourceRecord(records[i].topic, 0, i, START_MS, records[i].value,
                                  Violation("Amount", "min") if fault == "violation" else row)
    return FileCut.of(cut.key, 0, records, "watermark", True)


@pytest.mark.parametrize("faults", [
    {5: "line", 9: "violation"}, {5: "violation", 9: "line"}, {3: "xsd", 9: "line"}, {3: "xsd"},
    {2: "line", 6: "total"}, {2: "total", 6: "line"}, {4: "line"}, {4: "total", 8: "xsd"},
], ids=str)
@pytest.mark.parametrize("helper", [False, True], ids=["in worker", "XSD helper"])
def test_a_broken_deferred_part_reports_what_rendering_on_append_reports(faults, helper):
    assembler = _helper_assembler(min_bytes=1024) if helper else \
        StructuredAssembler(load_pack(pack_path(SCHEMAS_DIR, "pcs-clearing", "1.1.0")), "F_{{ part }}.xml",
                            PARTIES)
    try:
        cut = _broken_rows(assembler, faults)
        deferred, eager = _outcome(lambda: assembler.assemble(cut)), _outcome(lambda: _eager(assembler, cut))
    finally:
        _close(assembler)
    assert deferred[0] == "error" and deferred == eager


def test_an_aggregate_grouped_by_one_field_folds_as_one_grouped_by_several():
    """The one-field path builds its key directly; the groups, their order and sums are those
    of the general path (a second, constant group field shows it)."""
    from stream_app.core.structured.aggregates import Aggregate
    from stream_app.core.structured.pack import AggregateSpec

    rows = [{"c": c, "k": "x", "v": Decimal(v)} for c, v in
            [("EUR", "1.10"), ("USD", "2"), (None, "3"), ("EUR", "-0.10"), ("GBP", "5"), ("USD", "0.01")]]
    one = Aggregate(AggregateSpec(name="a", fn="sum", field="v", groupBy=["c"]))
    two = Aggregate(AggregateSpec(name="b", fn="sum", field="v", groupBy=["c", "k"]))
    for row in rows:
        one.add(row)
        two.add(row)
    assert list(one.result().items()) == [((c,), v) for (c, _), v in two.result().items()]
    assert one.result() == {(None,): Decimal("3"), ("EUR",): Decimal("1.00"), ("GBP",): Decimal("5"),
                            ("USD",): Decimal("2.01")}
