"""The formatter interface: already-typed lines in, file bytes out."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any, Protocol

from stream_app.core.decimals import quantize
from stream_app.core.formats.text import TEXT_ERROR_CLASS, FieldTextViolation, TextPolicy
from stream_app.core.structured.pack import FieldSpec


class FormatError(ValueError):
    """A value that the layout cannot hold (too wide, fails the XSD).  Never contains the value."""

    def __init__(self, message: str, error_class: str = "FORMAT_ERROR") -> None:
        super().__init__(message)
        self.error_class = error_class


@dataclass(frozen=True, slots=True)
class Line:
    """One header, detail or trailer line (an element in XML)."""

    kind: str  # header | detail | trailer
    element: str | None
    record_type: str | None
    values: tuple[tuple[FieldSpec, Any], ...]  # output fields only, typed values (None = null)


# A projected row -> the bytes of its detail line.
DetailWriter = Callable[[Mapping[str, Any]], bytes]


class Formatter(Protocol):
    """Renders a file in three steps so that the body can be streamed line by line:
    ``begin(header lines)``, then ``line(detail)`` per body line, then ``end(trailer lines)``."""

    def begin(self, header: list[Line]) -> bytes: ...

    def line(self, line: Line) -> bytes: ...

    def end(self, trailer: list[Line]) -> bytes: ...

    def detail_writer(self, fields: Sequence[FieldSpec]) -> DetailWriter:
        """Detail lines of rows with these output fields: the bytes ``line`` gives, prepared once."""

    def validate(self, chunks: Callable[[], Iterator[bytes]]) -> None:
        """Check the complete file (e.g. against an XSD, then business rules); raise FormatError.
        ``chunks`` gives the file's bytes again on every call."""


def line_writer(formatter: Formatter, fields: Sequence[FieldSpec]) -> DetailWriter:
    """The general detail writer: one ``Line`` per row through ``formatter.line``."""
    names = [(spec, spec.name) for spec in fields]
    line = formatter.line

    def write(row: Mapping[str, Any]) -> bytes:
        return line(Line("detail", None, None, tuple([(spec, row[name]) for spec, name in names])))

    return write


def clean_line_texts(policy: TextPolicy, line: Line, texts: list[str]) -> list[str]:
    """A CSV or fixed-width line's texts under the pack's text policy (core/formats/text.py);
    a refused value is a FormatError naming the field and the rule."""
    try:
        return policy.clean_texts([spec.name for spec, _ in line.values], texts)
    except FieldTextViolation as exc:
        raise FormatError(f"{line.kind} line: field {exc.field!r} violates rule {exc.violation.rule} "
                          f"({exc.violation})", TEXT_ERROR_CLASS[exc.violation.rule]) from None


def format_all(formatter: Formatter, lines: list[Line]) -> bytes:
    """The whole file at once (tests, small files): the same bytes as the streamed form."""
    header = [line for line in lines if line.kind == "header"]
    trailer = [line for line in lines if line.kind == "trailer"]
    body = b"".join(formatter.line(line) for line in lines if line.kind == "detail")
    data = formatter.begin(header) + body + formatter.end(trailer)
    formatter.validate(lambda: iter([data]))
    return data


def text_converter(spec: FieldSpec) -> Callable[[Any], str]:
    """``render_text`` for one field, with its common case (the field's own type) prepared."""
    if spec.type == "decimal" and spec.scale is not None:
        places = spec.scale

        def decimal_text(value: Any) -> str:
            if type(value) is Decimal:
                return format(quantize(value, places), "f")
            return render_text(spec, value)

        return decimal_text
    if spec.type == "datetime" and not spec.format:
        def datetime_text(value: Any) -> str:
            # strftime's format at a third of its cost; strftime pads no year below 1000 on glibc
            if type(value) is datetime and value.tzinfo is UTC and value.year >= 1000:
                return "%04d-%02d-%02dT%02d:%02d:%02dZ" % (  # noqa: UP031 - measured faster than format()
                    value.year, value.month, value.day, value.hour, value.minute, value.second)
            return render_text(spec, value)

        return datetime_text
    return lambda value: render_text(spec, value)


def render_text(spec: FieldSpec, value: Any) -> str:
    """The canonical text of a typed value; fixed by the pack, never by locale or platform."""
    if type(value) is str:
        return value
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Decimal):
        if spec.scale is not None:
            value = quantize(value, spec.scale)
        return format(value, "f")
    if isinstance(value, datetime):
        if spec.format:
            return value.strftime(spec.format)  # in the value's own zone (see to_timezone())
        if value.tzinfo is not UTC:  # decoders give UTC already; skip the copy then
            try:
                value = value.astimezone(UTC)
            except OverflowError:  # e.g. 0001-01-01T00:00+05:00 is before year 1 in UTC
                raise FormatError(f"field {spec.name!r}: the date-time is outside years 1-9999 in UTC",
                                  "VALUE_OUT_OF_RANGE") from None
        return value.strftime("%Y-%m-%dT%H:%M:%SZ")
    if isinstance(value, date):
        return value.strftime(spec.format or "%Y-%m-%d")
    return str(value)
