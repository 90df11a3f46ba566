"""Structured mode assembly: projected rows -> aggregates -> header/detail/trailer lines -> formatter."""

from __future__ import annotations

from collections import ChainMap
from decimal import Decimal
from typing import Any, Mapping, Sequence

from stream_app.core.formats.base import Formatter, FormatError, Line
from stream_app.core.formats.csv import CsvFormatter
from stream_app.core.formats.fixedwidth import FixedWidthFormatter
from stream_app.core.formats.xml import XmlFormatter
from stream_app.core.structured.pack import AggregateSpec, CompiledField, LineSpec, SchemaPack
from stream_app.core.structured.project import InvalidRecord, Violation, evaluate_fields
from stream_app.core.template import AssembledFile, AssemblyError, FileNamer, file_context
from stream_app.core.windows import FileCut, FileKey


def _sort_key(key: tuple) -> tuple:
    return tuple((value is not None, value) for value in key)


def _fold(spec: AggregateSpec, rows: Sequence[Mapping[str, Any]]) -> Any:
    if spec.fn == "count":
        return len(rows)
    values = [row[spec.field] for row in rows if row[spec.field] is not None]  # type: ignore[index]
    if spec.fn == "sum":
        return sum(values, Decimal(0)) if values and isinstance(values[0], Decimal) else sum(values)
    if not values:
        return None
    return min(values) if spec.fn == "min" else max(values)


def aggregate(spec: AggregateSpec, rows: Sequence[Mapping[str, Any]]) -> Any:
    """Decimal-exact count/sum/min/max, per group (sorted by key) when ``groupBy`` is set."""
    if not spec.groupBy:
        return _fold(spec, rows)
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(row[name] for name in spec.groupBy), []).append(row)
    return {key: _fold(spec, groups[key]) for key in sorted(groups, key=_sort_key)}


def build_formatter(pack: SchemaPack) -> Formatter:
    out = pack.spec.output
    if out.format == "xml":
        assert out.xml is not None
        return XmlFormatter(out.xml, out.encoding, pack.directory / out.xml.xsd if out.xml.xsd else None)
    if out.format == "csv":
        assert out.csv is not None
        detail = pack.body_fields if pack.spec.body else pack.fields
        return CsvFormatter(out.csv, out.encoding, out.lineEnding, [f.spec.name for f in detail if f.spec.output])
    return FixedWidthFormatter(out.encoding, out.lineEnding,
                               out.fixedWidth.detailRecordType if out.fixedWidth else None)


def _line(kind: str, spec: LineSpec | None, fields: list[CompiledField], row: Mapping[str, Any]) -> Line:
    values = tuple((f.spec, row[f.spec.name]) for f in fields if f.spec.output)
    default_element = {"header": "Header", "trailer": "Trailer"}.get(kind)
    return Line(kind, (spec.element if spec else None) or default_element, spec.recordType if spec else None, values)


class StructuredAssembler:
    def __init__(self, pack: SchemaPack, file_name_template: str) -> None:
        self.pack = pack
        self._namer = FileNamer(file_name_template)
        self._formatter = build_formatter(pack)
        self._aggregates = {a.name: a for a in pack.spec.aggregates}

    @property
    def on_invalid_record(self) -> str:
        return self.pack.spec.onInvalidRecord

    def project(self, value: Mapping[str, Any]) -> dict[str, Any]:
        """Map and validate one input record; raises ``InvalidRecord`` naming field and rule."""
        return evaluate_fields(self.pack.fields, value)

    def file_name(self, key: FileKey, part: int, record_count: int) -> str:
        return self._namer.name(key, part, record_count)

    def assemble(self, cut: FileCut) -> AssembledFile:
        rows = []
        for record in cut.records:
            if isinstance(record.row, Violation):
                raise AssemblyError(
                    f"{record.topic}/{record.partition}@{record.offset}: {record.row.describe()}",
                    "VALIDATION_FAILED", source=(record.topic, record.partition, record.offset),
                )
            rows.append(record.row)
        context: dict[str, Any] = file_context(cut.key, cut.part, len(rows))
        for name, spec in self._aggregates.items():
            context[name] = aggregate(spec, rows)
        lines = self._fixed_lines("header", context)
        lines.extend(self._detail_lines(rows))
        lines.extend(self._fixed_lines("trailer", context))
        try:
            body = self._formatter.format(lines)
        except FormatError as exc:
            raise AssemblyError(str(exc), exc.error_class) from None
        return AssembledFile(self.file_name(cut.key, cut.part, len(rows)), body, len(rows))

    def _evaluate(self, where: str, fields: list[CompiledField], context: Mapping[str, Any]) -> dict[str, Any]:
        try:
            return evaluate_fields(fields, context)
        except InvalidRecord as exc:
            raise AssemblyError(f"{where}: {exc.violation.describe()}", "VALIDATION_FAILED") from None

    def _fixed_lines(self, kind: str, context: Mapping[str, Any]) -> list[Line]:
        specs = self.pack.spec.header if kind == "header" else self.pack.spec.trailer
        compiled = self.pack.header if kind == "header" else self.pack.trailer
        lines = []
        for i, (spec, fields) in enumerate(zip(specs, compiled)):
            if spec.forEach is None:
                lines.append(_line(kind, spec, fields, self._evaluate(f"{kind}[{i}]", fields, context)))
                continue
            group_by = self._aggregates[spec.forEach].groupBy
            for key, value in context[spec.forEach].items():
                scope = ChainMap({"key": key[0] if len(key) == 1 else "/".join(map(str, key)), "value": value,
                                  **dict(zip(group_by, key))}, context)
                lines.append(_line(kind, spec, fields, self._evaluate(f"{kind}[{i}]", fields, scope)))
        return lines

    def _detail_lines(self, rows: list[dict[str, Any]]) -> list[Line]:
        body = self.pack.spec.body
        if body is None:
            return [_line("detail", None, self.pack.fields, row) for row in rows]
        groups: dict[tuple, list[dict[str, Any]]] = {}
        for row in rows:
            groups.setdefault(tuple(row[name] for name in body.groupBy), []).append(row)
        lines = []
        for key in sorted(groups, key=_sort_key):
            scope = dict(zip(body.groupBy, key))
            scope.update({col.name: _fold(col, groups[key]) for col in body.columns})
            lines.append(_line("detail", None, self.pack.body_fields,
                               self._evaluate("body", self.pack.body_fields, scope)))
        return lines
