"""The formatter interface: already-typed lines in, file bytes out."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timezone
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any, Protocol

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


class Formatter(Protocol):
    def format(self, lines: list[Line]) -> bytes: ...


def render_text(spec: FieldSpec, value: Any) -> str:
    """The canonical text of a typed value; fixed by the pack, never by locale or platform."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Decimal):
        if spec.scale is not None:
            value = value.quantize(Decimal(1).scaleb(-spec.scale), rounding=ROUND_HALF_EVEN)
        return format(value, "f")
    if isinstance(value, datetime):
        if spec.format:
            return value.strftime(spec.format)  # in the value's own zone (see to_timezone())
        return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    if isinstance(value, date):
        return value.strftime(spec.format or "%Y-%m-%d")
    return str(value)
