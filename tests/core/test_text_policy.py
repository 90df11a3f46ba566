"""Formatter safety of CSV and fixed width: control characters and encoding are decided per field."""

from __future__ import annotations

import csv
import io
import shutil
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_app.core.assembly import FileVariables
from stream_app.core.formats.base import FormatError, Line
from stream_app.core.formats.text import TextPolicy, transliterate
from stream_app.core.structured.assembler import StructuredAssembler
from stream_app.core.structured.pack import PackError, load_pack, pack_path
from stream_app.core.structured.project import InvalidRecord
from stream_app.resources import SCHEMAS_DIR
from stream_app.tools.demo import matched_records
from tests.core.test_structured import cut_of

RECORD = next(iter(matched_records(1, seed=4)))


def assembler(tmp_path: Path, schema_id: str, version: str = "1.1.0", **output) -> StructuredAssembler:
    shutil.copytree(SCHEMAS_DIR / schema_id, tmp_path / schema_id, dirs_exist_ok=True)
    path = pack_path(tmp_path, schema_id, version)
    data = yaml.safe_load(path.read_text())
    data["output"].update(output)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return StructuredAssembler(load_pack(path), "f_{{ part }}.out",
                               FileVariables(None, {"sender_id": "ACQ0000001", "receiver_id": "SCHEME0001"}))


@pytest.mark.parametrize("schema_id", ["fixed-clearing", "settlement-report"])
@pytest.mark.parametrize("text, rule", [("CORNER\nBAKERY", "controlChar"), ("CORNER\r\nBAKERY", "controlChar"),
                                        ("TAB\tSTOP", "controlChar"), ("NUL\x00", "controlChar"),
                                        ("BELL\x07", "controlChar"), ("NEL\x85", "controlChar"),
                                        ("LINE\u2028SEP", "controlChar")])
def test_a_control_character_is_a_violation_of_the_field(tmp_path, schema_id, text, rule):
    asm = assembler(tmp_path, schema_id)
    with pytest.raises(InvalidRecord) as err:
        asm.project({**RECORD, "merchant_name": text})
    field = "merchant" if schema_id == "fixed-clearing" else "merchant_name"
    assert err.value.violation.field == field and err.value.violation.rule == rule
    assert text not in str(err.value)


def test_a_declared_replacement_keeps_every_fixed_width_line_its_length(tmp_path):
    asm = assembler(tmp_path, "fixed-clearing", controlCharacters="replace", controlReplacement="_")
    values = [{**RECORD, "merchant_name": "CORNER\r\nBAKERY\x01"}]
    body = asm.assemble(cut_of(asm, values)).body
    lines = body.split(b"\r\n")
    assert lines[-1] == b"" and {len(line) for line in lines[:-1]} == {120}
    assert b"CORNER__BAKERY_" in body


def test_non_ascii_is_a_violation_naming_the_field_or_a_declared_transliteration(tmp_path):
    strict = assembler(tmp_path / "a", "fixed-clearing")
    with pytest.raises(InvalidRecord) as err:
        strict.project({**RECORD, "merchant_name": "Café Müller"})
    assert (err.value.violation.field, err.value.violation.rule) == ("merchant", "encoding")
    lenient = assembler(tmp_path / "b", "fixed-clearing", unencodable="transliterate")
    body = lenient.assemble(cut_of(lenient, [{**RECORD, "merchant_name": "Café Müller Straße"}])).body
    assert b"CAFE MULLER STRASSE" in body and {len(x) for x in body.split(b"\r\n")[:-1]} == {120}
    with pytest.raises(InvalidRecord) as err:  # no transliteration to ASCII: still the field's violation
        lenient.project({**RECORD, "merchant_name": "東京 SHOP"})
    assert (err.value.violation.field, err.value.violation.rule) == ("merchant", "encoding")


def test_header_values_are_checked_by_the_formatter_naming_field_and_rule(tmp_path):
    asm = assembler(tmp_path, "fixed-clearing")
    spec = asm.pack.header[0][0].spec
    with pytest.raises(FormatError) as err:
        asm.formatter.line(Line("header", None, "H", ((spec, "ACQ\n01"),)))
    assert err.value.error_class == "CONTROL_CHAR" and f"field {spec.name!r} violates rule controlChar" in str(err.value)


def test_a_replacement_that_is_itself_a_control_character_is_a_pack_error(tmp_path):
    with pytest.raises(PackError, match=r"output.controlReplacement: \[controlChar\]"):
        assembler(tmp_path, "fixed-clearing", controlCharacters="replace", controlReplacement="\n")


def test_a_transliteration_longer_than_the_field_is_the_record_s_violation(tmp_path):
    asm = assembler(tmp_path, "fixed-clearing", unencodable="transliterate")
    with pytest.raises(InvalidRecord) as err:
        asm.project({**RECORD, "merchant_name": "…" * 25})  # 25 characters, 75 once transliterated
    assert (err.value.violation.field, err.value.violation.rule) == ("merchant", "width")


def test_transliteration_is_a_fixed_function_of_the_text():
    assert transliterate("Ærøskøbing Łódź Ðað “quoted” – €5") == 'AEroskobing Lodz Dad "quoted" - EUR5'


field_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)
policies = st.sampled_from([("reject", "reject"), ("replace", "reject"), ("reject", "transliterate"),
                            ("replace", "transliterate")])


@settings(max_examples=300, deadline=None)
@given(field_text, policies)
def test_a_fixed_width_line_is_always_exactly_its_length_or_the_field_is_named(tmp_path_factory, text, policy):
    control, unencodable = policy
    asm = assembler(tmp_path_factory.mktemp("p"), "fixed-clearing", controlCharacters=control, unencodable=unencodable)
    try:
        values = [{**RECORD, "merchant_name": text}]
        body = asm.assemble(cut_of(asm, values)).body
    except InvalidRecord as exc:
        assert exc.violation.field == "merchant" and exc.violation.rule in ("controlChar", "encoding", "required", "width")
        return
    lines = body.split(b"\r\n")
    assert lines[-1] == b"" and {len(line) for line in lines[:-1]} == {120}
    assert body.isascii()


@settings(max_examples=300, deadline=None)
@given(field_text, policies)
def test_a_csv_row_reads_back_as_the_value_written_or_the_field_is_named(tmp_path_factory, text, policy):
    control, unencodable = policy
    asm = assembler(tmp_path_factory.mktemp("p"), "settlement-report", controlCharacters=control,
                    unencodable=unencodable)
    try:
        row = asm.project({**RECORD, "merchant_name": text})
    except InvalidRecord as exc:
        assert exc.violation.field == "merchant_name"
        assert exc.violation.rule in ("controlChar", "encoding", "maxLength", "required")
        return
    body = asm.assemble(cut_of(asm, [{**RECORD, "merchant_name": text}])).body.decode("utf-8")
    rows = list(csv.reader(io.StringIO(body, newline="")))
    assert len(rows) == 3 and rows[1][5] == row["merchant_name"]  # column row, the record, one total
    assert TextPolicy("utf-8", "reject", " ", "reject").clean(row["merchant_name"]) == row["merchant_name"]
