"""Rows prepared ahead (their detail line rendered, only the folded fields kept) make the same
parts as plain rows: the same bytes, and the same error for a broken part."""

from __future__ import annotations

import pickle
from decimal import Decimal

import pytest

from stream_app.core.formats.base import FormatError
from stream_app.core.records import SourceRecord
from stream_app.core.structured.assembler import StructuredAssembler
from stream_app.core.structured.pack import load_pack, pack_path
from stream_app.core.structured.prepared import RenderedRow, can_prepare, folded_fields
from stream_app.core.windows import FileCut
from stream_app.resources import SCHEMAS_DIR
from stream_app.tools.demo import matched_records
from tests.core import test_iso20022 as iso
from tests.core.test_structured import (
    PARTIES,
    _broken_rows,
    _close,
    _eager,
    _helper_assembler,
    _outcome,
    cut_of,
)

VERSIONS = [("pcs-clearing", "1.0.0"), ("pcs-clearing", "1.1.0"), ("settlement-report", "1.1.0"),
            ("fixed-clearing", "1.1.0"), ("pacs-008", "1.0.0")]


def _rendered(assembler: StructuredAssembler, row: object) -> object:
    """What the prepare helper sends for a projected row (a violation stays as it is)."""
    if not isinstance(row, dict):
        return row
    fields = {name: row[name] for name in folded_fields(assembler.pack)}
    try:
        return RenderedRow(fields, assembler.write_detail(row))
    except FormatError as exc:
        return RenderedRow(fields, None, (str(exc), exc.error_class))


def _prepared_cut(assembler: StructuredAssembler, cut: FileCut) -> FileCut:
    records = [SourceRecord(r.topic, r.partition, r.offset, r.event_time_ms, {}, _rendered(assembler, r.row))
               for r in cut.records]
    return FileCut.of(cut.key, cut.part, records, cut.reason, True)


def _assembler(schema_id: str, version: str) -> StructuredAssembler:
    return StructuredAssembler(load_pack(pack_path(SCHEMAS_DIR, schema_id, version)), "F_{{ part }}.out", PARTIES)


@pytest.mark.parametrize("schema_id, version", VERSIONS, ids=lambda v: str(v))
def test_prepared_rows_make_the_bytes_of_plain_rows(schema_id, version):
    if schema_id == "pacs-008":  # one currency per message, in its group key
        assembler = iso.assembler()
        cut = iso.cut(assembler, iso.records(3000, seed=11))
    else:
        assembler = _assembler(schema_id, version)
        cut = cut_of(assembler, list(matched_records(3000, seed=11, span_hours=5)))
    prepared = _prepared_cut(assembler, cut)
    assert all(type(r.row) is RenderedRow for r in prepared.records)
    plain = _outcome(lambda: assembler.assemble(cut))
    assert plain[0] == "file"
    assert _outcome(lambda: assembler.assemble(prepared)) == plain
    assert _outcome(lambda: _eager(assembler, prepared)) == plain  # a part rendered on append too
    weigh = assembler.detail_weigher()
    assert weigh is not None
    assert [weigh(cut.key, 0, r, 0) for r in prepared.records] == [weigh(cut.key, 0, r, 0) for r in cut.records]


@pytest.mark.parametrize("faults", [
    {5: "line", 9: "violation"}, {5: "violation", 9: "line"}, {3: "xsd", 9: "line"}, {2: "total", 6: "line"},
    {4: "line"}, {4: "total", 8: "xsd"},
], ids=str)
@pytest.mark.parametrize("helper", [False, True], ids=["in worker", "XSD helper"])
def test_a_broken_part_of_prepared_rows_reports_what_plain_rows_report(faults, helper):
    assembler = _helper_assembler(min_bytes=1024) if helper else _assembler("pcs-clearing", "1.1.0")
    try:
        cut = _broken_rows(assembler, faults)
        prepared = _prepared_cut(assembler, cut)
        if "line" in faults.values():  # the line's error travels with the row, not its text
            assert any(type(r.row) is RenderedRow and r.row.line is None for r in prepared.records)
        plain = _outcome(lambda: assembler.assemble(cut))
        assert plain[0] == "error"
        assert _outcome(lambda: assembler.assemble(prepared)) == plain
        assert _outcome(lambda: _eager(assembler, prepared)) == plain
    finally:
        _close(assembler)


def test_the_preparer_projects_renders_and_keeps_only_what_the_part_folds():
    assembler = _assembler("pcs-clearing", "1.1.0")
    preparer = assembler.row_preparer()
    assert preparer is not None
    assert folded_fields(assembler.pack) == ("Currency", "signed")
    for value in matched_records(200, seed=4, span_hours=2):
        row = preparer.prepare(value)
        projected = assembler.project(value)
        assert dict(row) == {"Currency": projected["Currency"], "signed": projected["signed"]}
        assert type(row["signed"]) is Decimal and row.line == assembler.write_detail(projected)


def test_a_pack_whose_body_groups_its_records_is_not_prepared():
    assembler = _assembler("net-positions", "1.0.0")
    assert not can_prepare(assembler.pack) and assembler.row_preparer() is None


def test_a_rendered_row_survives_the_backpressure_spill():
    row = RenderedRow({"Currency": "EUR", "signed": Decimal("-1.50")}, b"<T/>\n")
    broken = RenderedRow({"Currency": "EUR"}, None, ("too wide", "FORMAT_ERROR"))
    for original in (row, broken):
        copy = pickle.loads(pickle.dumps(original, protocol=pickle.HIGHEST_PROTOCOL))
        assert type(copy) is RenderedRow and copy == original
        assert (copy.line, copy.error) == (original.line, original.error)
