"""Structured mode assembly: projected rows -> aggregates -> header/detail/trailer lines -> formatter."""

from __future__ import annotations

from collections import ChainMap
from collections.abc import Iterator, Mapping
from decimal import Decimal
from itertools import chain
from typing import Any

from stream_app.core.assembly import DEFAULT_VARIABLES, AssembledFile, AssemblyError, FileVariables
from stream_app.core.formats.base import FormatError, Formatter, Line
from stream_app.core.formats.csv import CsvFormatter
from stream_app.core.formats.fixedwidth import FixedWidthFormatter
from stream_app.core.formats.text import FieldTextViolation, TextPolicy
from stream_app.core.formats.xml import XmlFormatter, unrepresentable_finder
from stream_app.core.limits import Weigher
from stream_app.core.records import SourceRecord
from stream_app.core.spool import MemorySpool, Spool
from stream_app.core.structured.aggregates import Aggregate, Fold, sort_key
from stream_app.core.structured.checks import TrailerCheck
from stream_app.core.structured.pack import CompiledField, LineSpec, SchemaPack
from stream_app.core.structured.prepared import RowPreparer, can_prepare, line_of
from stream_app.core.structured.project import InvalidRecord, RowProjector, Violation, evaluate_fields
from stream_app.core.template import FileNamer
from stream_app.core.windows import FileCut, FileKey

# Deferred detail lines go to the XSD check in groups of this size: its helper process checks one
# while the writer renders the next (core/formats/xsd_helper.py sends groups of 1 MiB).
RENDER_GROUP_BYTES = 1 << 20


def build_formatter(pack: SchemaPack, xsd_process: bool = False) -> Formatter:
    out = pack.spec.output
    if out.format == "xml":
        assert out.xml is not None
        return XmlFormatter(out.xml, out.encoding, pack.xsd_path, pack.schematron_path, xsd_process)
    text = text_policy(pack)
    if out.format == "csv":
        assert out.csv is not None
        detail = pack.body_fields if pack.spec.body else pack.fields
        return CsvFormatter(out.csv, out.encoding, out.lineEnding, [f.spec.name for f in detail if f.spec.output], text)
    return FixedWidthFormatter(out.encoding, out.lineEnding,
                               out.fixedWidth.detailRecordType if out.fixedWidth else None, text)


def text_policy(pack: SchemaPack) -> TextPolicy:
    out = pack.spec.output
    return TextPolicy(out.encoding, out.controlCharacters, out.controlReplacement, out.unencodable)


def _line(kind: str, spec: LineSpec | None, fields: list[CompiledField], row: Mapping[str, Any]) -> Line:
    values = tuple((f.spec, row[f.spec.name]) for f in fields if f.spec.output)
    default_element = {"header": "Header", "trailer": "Trailer"}.get(kind)
    return Line(kind, (spec.element if spec else None) or default_element, spec.recordType if spec else None, values)


class StructuredAssembler:
    def __init__(self, pack: SchemaPack, file_name_template: str, variables: FileVariables = DEFAULT_VARIABLES,
                 xsd_process: bool = False) -> None:
        """``xsd_process``: check large XML documents against the XSD in a helper process."""
        self.pack = pack
        self.variables = variables
        self._namer = FileNamer(file_name_template, variables)
        self.formatter = build_formatter(pack, xsd_process)
        # Text the format cannot hold is the record's fault: projection says so, naming the field
        # (or repairs it, where the pack says how), so onInvalidRecord decides, not the window.
        output_names = [f.spec.name for f in pack.fields if f.spec.output]
        xml = isinstance(self.formatter, XmlFormatter)
        self._first_unrepresentable = unrepresentable_finder(output_names) if xml else None
        self._clean_text = None if xml else text_policy(pack).row_cleaner(output_names)
        # fixed width: a string longer than its field is the record's violation, not the file's
        self._widths = [(f.spec.name, f.spec.width) for f in pack.fields
                        if f.spec.output and f.spec.width is not None and pack.spec.output.format == "fixedWidth"]
        self._projector = RowProjector(pack.fields)
        self.write_detail = self.formatter.detail_writer([f.spec for f in pack.fields if f.spec.output])

    @property
    def on_invalid_record(self) -> str:
        return self.pack.spec.onInvalidRecord

    def project(self, value: Mapping[str, Any]) -> dict[str, Any]:
        """Map and validate one input record; raises ``InvalidRecord`` naming field and rule."""
        row = self._projector.evaluate(value)
        if self._first_unrepresentable is not None:
            bad = self._first_unrepresentable(row)
            if bad is not None:
                raise InvalidRecord(Violation(bad, "xmlChar", "a character XML 1.0 cannot represent"))
        elif self._clean_text is not None:
            try:
                self._clean_text(row)
            except FieldTextViolation as exc:
                raise InvalidRecord(Violation(exc.field, exc.violation.rule, str(exc.violation))) from None
            for name, width in self._widths:
                value = row[name]
                if type(value) is str and len(value) > width:
                    raise InvalidRecord(Violation(name, "width", f"{len(value)} characters, the field holds {width}"))
        return row

    def file_name(self, key: FileKey, part: int, record_count: int) -> str:
        return self._namer.name(key, part, record_count)

    def detail_weigher(self) -> Weigher | None:
        """The bytes each record's detail line (or element) renders to, for ``maxBytesPerFile``;
        None when the pack groups its body (its lines are per group, not per record)."""
        if self.pack.spec.body:
            return None
        write = self.write_detail

        def weigh(key: FileKey, part: int, record: SourceRecord, seq: int) -> int:
            row = record.row
            if not isinstance(row, dict):
                return 0  # a violation: the part stops on it
            try:
                return len(line_of(row, write))
            except FormatError:
                return 0  # the part's write stops on it and names the record
        return weigh

    def row_preparer(self) -> RowPreparer | None:
        """Projection and rendering in one step, for rows prepared ahead; None for a grouped body."""
        return RowPreparer(self.pack, self.project, self.write_detail) if can_prepare(self.pack) else None

    def open_part(self, key: FileKey, part: int, spool: Spool) -> StructuredPart:
        return StructuredPart(self, key, part, spool)

    def assemble(self, cut: FileCut) -> AssembledFile:
        # The cut's records are in memory: their detail lines are rendered as the document is
        # checked (see StructuredPart, deferred), not before.
        part = StructuredPart(self, cut.key, cut.part, MemorySpool(), deferred=True)
        for record in cut.records:
            part.append(record)
        return part.finish()

    def evaluate(self, where: str, fields: list[CompiledField], context: Mapping[str, Any]) -> dict[str, Any]:
        try:
            return evaluate_fields(fields, context)
        except InvalidRecord as exc:
            raise AssemblyError(f"pack {self.pack.id}: {where}: {exc.violation.describe()}", "VALIDATION_FAILED") from None


class StructuredPart:
    """Folds aggregates and writes body lines to a spool as rows arrive; header/trailer at finish.

    A grouped body (e.g. net positions) folds its groups instead of writing lines: memory grows
    with the number of groups, never with the number of records.

    ``deferred`` (a cut whose records are all in memory): the detail lines are rendered at
    ``finish``, while the document is checked against its XSD, so that the XSD helper process
    checks each group of lines while this thread renders the next (rendering first, then
    checking, kept the writer waiting for the helper for half of each write).  The header,
    which needs the aggregates, is ready first because the rows are folded on ``append``.  The
    bytes, and which error a broken part reports, are those of rendering on ``append``: a
    detail line that cannot be rendered is reported before anything found later (a record
    after it, the aggregates, the trailer checks, the XSD).
    """

    def __init__(self, assembler: StructuredAssembler, key: FileKey, part: int, spool: Spool,
                 deferred: bool = False) -> None:
        self._assembler = assembler
        self._pack = assembler.pack
        self._key = key
        self._part = part
        self._spool = spool
        types = self._pack.field_types
        self._aggregates = [Aggregate(spec, 0 if types.get(spec.field or "") == "int" else Decimal(0))
                            for spec in self._pack.spec.aggregates]
        body = self._pack.spec.body
        self._groups: dict[tuple, list[Fold]] | None = {} if body else None
        self._write_detail = assembler.write_detail
        self._error: AssemblyError | None = None
        self.count = 0
        # trailer checks: the detail lines written so far, and the sums of the fields checked
        self._summed = {check.summed for check in self._pack.trailer_checks if check.summed is not None}
        self._detail_lines = 0
        self._sums: dict[str, Any] = dict.fromkeys(self._summed, 0)
        # forEach checks: per group fields, per key, the lines and sums of the detail lines
        self._keyed: dict[tuple[str, ...], dict[tuple, list]] = {
            check.group_by: {} for check in self._pack.trailer_checks if check.group_by}
        self._framed: tuple[list[Line], dict[str, Any]] = ([], {})
        # deferred: the records appended, and how many of their detail lines are in the spool
        self._deferred: list[SourceRecord] | None = [] if deferred and self._groups is None else None
        self._rendered = 0

    def append(self, record: SourceRecord) -> None:
        if self._error is not None:
            return
        self.count += 1
        row = record.row
        if isinstance(row, Violation):
            self._error = AssemblyError(f"pack {self._pack.id}: {record.topic}/{record.partition}@{record.offset}: "
                                        f"{row.describe()}",
                                        "VALIDATION_FAILED", source=(record.topic, record.partition, record.offset))
            return
        try:
            for acc in self._aggregates:
                acc.add(row)
        except AssemblyError as exc:
            if self._deferred is None:
                raise
            self._error = exc  # raised at finish, after the lines of the records before this one
            return
        if self._deferred is not None:
            self._deferred.append(record)
            if self._pack.trailer_checks:
                self._count_detail(row)
            return
        if self._groups is not None:
            body = self._pack.spec.body
            assert body is not None
            key = tuple(row[name] for name in body.groupBy)
            folds = self._groups.get(key)
            if folds is None:
                folds = self._groups[key] = [Fold(col) for col in body.columns]
            for fold in folds:
                fold.add(row)
            return
        try:
            self._spool.write(line_of(row, self._write_detail))
            if self._pack.trailer_checks:
                self._count_detail(row)
        except FormatError as exc:
            self._error = self._line_error(record, exc)

    def _line_error(self, record: SourceRecord, exc: FormatError) -> AssemblyError:
        return AssemblyError(f"pack {self._pack.id}: {record.topic}/{record.partition}@{record.offset}: {exc}",
                             exc.error_class, source=(record.topic, record.partition, record.offset))

    def _render(self) -> Iterator[bytes]:
        """Deferred: the detail lines not yet in the spool, written to it and given in groups of
        about ``RENDER_GROUP_BYTES``; raises the ``AssemblyError`` of a line that cannot be rendered."""
        records = self._deferred
        assert records is not None
        write, spool = self._write_detail, self._spool
        group: list[bytes] = []
        size = 0
        while self._rendered < len(records):
            record = records[self._rendered]
            try:
                line = line_of(record.row, write)
            except FormatError as exc:
                raise self._line_error(record, exc) from None
            group.append(line)
            size += len(line)
            self._rendered += 1
            if size >= RENDER_GROUP_BYTES:
                data = b"".join(group)
                spool.write(data)
                yield data
                group, size = [], 0
        if group:
            data = b"".join(group)
            spool.write(data)
            yield data

    def _body(self) -> Iterator[bytes]:
        """The body as far as rendered (what the spool holds now), then the rest, rendered."""
        if self._deferred is None or self._rendered == len(self._deferred):
            yield from self._spool.chunks()
            return
        if self._rendered:
            yield from list(self._spool.chunks())  # as it is now: _render appends to it
        yield from self._render()

    def _render_all(self) -> None:
        """Deferred: every detail line in the spool (raises a line's ``AssemblyError``)."""
        if self._deferred is not None:
            for _ in self._render():
                pass

    def frame(self) -> tuple[bytes, bytes, bytes]:
        """Header, grouped body and trailer bytes of the part as it is now (preflight renders
        them for an empty part to check the file-level expressions)."""
        assembler, formatter = self._assembler, self._assembler.formatter
        context: dict[str, Any] = assembler.variables.context(self._key, self._part, self.count)
        for acc in self._aggregates:
            context[acc.spec.name] = acc.result()
        try:
            head = formatter.begin(self._fixed_lines("header", context))
            group_lines = self._group_lines()
            groups = b"".join(formatter.line(line) for line in group_lines)
            tail = formatter.end(self._fixed_lines("trailer", context))
        except FormatError as exc:
            raise AssemblyError(f"pack {self._pack.id}: {exc}", exc.error_class) from None
        self._framed = (group_lines, context)  # what check_trailer recounts against
        return head, groups, tail

    def _count_detail(self, row: Mapping[str, Any]) -> None:
        self._detail_lines += 1
        for name in self._summed:
            value = row[name]
            if value is not None:
                self._sums[name] += value
        for group_by, per_key in self._keyed.items():
            key = tuple(row[name] for name in group_by)
            counted = per_key.get(key)
            if counted is None:
                counted = per_key[key] = [0, dict.fromkeys(self._summed, 0)]
            counted[0] += 1
            for name in self._summed:
                if row[name] is not None:
                    counted[1][name] += row[name]

    def check_trailer(self, name: str) -> None:
        """The trailer's checked fields equal what the detail lines written add up to (recounted
        here, apart from the aggregates the trailer's expressions read); a forEach line's, what
        the detail lines of its key add up to."""
        if not self._pack.trailer_checks or self._error is not None:
            return
        group_lines, context = self._framed  # frame() ran just before (finish)
        if self._groups is not None:  # a grouped body: its lines are the groups, rendered at the end
            self._detail_lines, self._sums = 0, dict.fromkeys(self._summed, 0)
            self._keyed = {group_by: {} for group_by in self._keyed}
            for line in group_lines:
                self._count_detail({spec.name: value for spec, value in line.values})
        for check in self._pack.trailer_checks:
            if check.group_by:
                self._check_per_key(name, check, context)
                continue
            written = self._assembler.evaluate(f"trailer[{check.line}]", self._pack.trailer[check.line],
                                               context)[check.field]
            expected = self._detail_lines if check.summed is None else self._sums[check.summed]
            self._compare(name, check, written, expected, "")

    def _check_per_key(self, name: str, check: TrailerCheck, context: Mapping[str, Any]) -> None:
        spec, fields = self._pack.spec.trailer[check.line], self._pack.trailer[check.line]
        assert spec.forEach is not None
        counted = self._keyed[check.group_by]
        keys = context[spec.forEach]
        for key in sorted(set(counted) | set(keys), key=sort_key):
            if key not in keys:
                raise AssemblyError(f"pack {self._pack.id}: {name}: trailer check failed: detail lines of "
                                    f"{'/'.join(map(str, key))} have no trailer[{check.line}] line",
                                    "TRAILER_CHECK_FAILED")
            scope = self._key_scope(spec.forEach, key, context)
            written = self._assembler.evaluate(f"trailer[{check.line}]", fields, scope)[check.field]
            lines, sums = counted.get(key, [0, dict.fromkeys(self._summed, 0)])
            self._compare(name, check, written, lines if check.summed is None else sums[check.summed],
                          f" of {'/'.join(map(str, key))}")

    def _compare(self, name: str, check: TrailerCheck, written: Any, expected: Any, of_key: str) -> None:
        if written is None or Decimal(written) != Decimal(expected):
            what = "count" if check.summed is None else f"sum({check.summed})"
            raise AssemblyError(f"pack {self._pack.id}: {name}: trailer check failed: trailer[{check.line}] field "
                                f"{check.field} is not the {what} of the detail lines{of_key}",
                                "TRAILER_CHECK_FAILED")

    def _key_scope(self, for_each: str, key: tuple, context: Mapping[str, Any]) -> ChainMap:
        """What a forEach line's expressions read for one key of its aggregate."""
        aggregates = {a.name: a for a in self._pack.spec.aggregates}
        group_by = aggregates[for_each].groupBy
        # aggregates grouped by the same fields read as their value for this line's key
        siblings = [a.name for a in aggregates.values() if a.groupBy == group_by and a.name != for_each]
        return ChainMap({"key": key[0] if len(key) == 1 else "/".join(map(str, key)),
                         "value": context[for_each].get(key),
                         **dict(zip(group_by, key)),
                         **{name: context[name].get(key) for name in siblings}}, dict(context))

    def finish(self) -> AssembledFile:
        try:
            return self._finish()
        except AssemblyError:
            self._render_all()  # deferred: a detail line's error comes first, as if rendered on append
            raise

    def _finish(self) -> AssembledFile:
        if self._error is not None:
            raise self._error
        assembler, formatter = self._assembler, self._assembler.formatter
        head, groups, tail = self.frame()
        body = self._body

        def chunks() -> Iterator[bytes]:
            return chain((head,), body(), (groups, tail))

        name = assembler.file_name(self._key, self._part, self.count)
        self.check_trailer(name)
        try:
            formatter.validate(chunks)  # deferred: renders the detail lines as it reads them
        except FormatError as exc:
            raise AssemblyError(f"pack {self._pack.id}: {name}: {exc}", exc.error_class) from None
        self._render_all()  # a formatter that checks nothing read none of them
        return AssembledFile(name, chunks, self.count)

    def discard(self) -> None:
        self._spool.discard()

    def _fixed_lines(self, kind: str, context: Mapping[str, Any]) -> list[Line]:
        specs = self._pack.spec.header if kind == "header" else self._pack.spec.trailer
        compiled = self._pack.header if kind == "header" else self._pack.trailer
        lines = []
        for i, (spec, fields) in enumerate(zip(specs, compiled)):
            if spec.forEach is None:
                lines.append(_line(kind, spec, fields, self._assembler.evaluate(f"{kind}[{i}]", fields, context)))
                continue
            for key in context[spec.forEach]:
                scope = self._key_scope(spec.forEach, key, context)
                lines.append(_line(kind, spec, fields, self._assembler.evaluate(f"{kind}[{i}]", fields, scope)))
        return lines

    def _group_lines(self) -> list[Line]:
        body = self._pack.spec.body
        if body is None or self._groups is None:
            return []
        lines = []
        for key in sorted(self._groups, key=sort_key):
            scope: dict[str, Any] = dict(zip(body.groupBy, key))
            scope.update({col.name: fold.result() for col, fold in zip(body.columns, self._groups[key])})
            lines.append(_line("detail", None, self._pack.body_fields,
                               self._assembler.evaluate("body", self._pack.body_fields, scope)))
        return lines
