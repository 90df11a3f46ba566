"""Record projection: input record -> typed, validated row, following the pack's field rules."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timezone
from decimal import Decimal
from typing import Any, Mapping

from stream_app.core.structured.expressions import EvaluationError
from stream_app.core.structured.pack import CompiledField


@dataclass(frozen=True, slots=True)
class Violation:
    """A field that breaks a rule.  Names the field and the rule, never the value."""

    field: str
    rule: str
    detail: str = ""

    def describe(self) -> str:
        return f"field {self.field!r} violates rule {self.rule}" + (f" ({self.detail})" if self.detail else "")


class InvalidRecord(ValueError):
    def __init__(self, violation: Violation) -> None:
        super().__init__(violation.describe())
        self.violation = violation


def _coerce(field: CompiledField, value: Any) -> Any:
    kind = field.spec.type
    if kind == "string" and isinstance(value, str):
        return value
    if kind == "int" and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind == "decimal" and isinstance(value, (Decimal, int)) and not isinstance(value, bool):
        return Decimal(value)
    if kind == "datetime" and isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    if kind == "date" and isinstance(value, date) and not isinstance(value, datetime):
        return value
    if kind == "bool" and isinstance(value, bool):
        return value
    raise InvalidRecord(Violation(field.spec.name, "type", f"expected {kind}, got {type(value).__name__}"))


def check_value(field: CompiledField, value: Any) -> Any:
    """Coerce and validate one value; return it typed or raise ``InvalidRecord``.

    ``evaluate_fields`` passes valid plain strings, the common case, without calling this.
    """
    spec = field.spec
    if value is None or (type(value) is str and not value):
        if spec.required:
            raise InvalidRecord(Violation(spec.name, "required"))
        return None
    value = _coerce(field, value)
    name = spec.name
    if spec.enum is not None and str(value) not in spec.enum:
        raise InvalidRecord(Violation(name, "enum"))
    if isinstance(value, str):
        if spec.minLength is not None and len(value) < spec.minLength:
            raise InvalidRecord(Violation(name, "minLength", f"length {len(value)} < {spec.minLength}"))
        if spec.maxLength is not None and len(value) > spec.maxLength:
            raise InvalidRecord(Violation(name, "maxLength", f"length {len(value)} > {spec.maxLength}"))
        if field.pattern is not None and not field.pattern.fullmatch(value):
            raise InvalidRecord(Violation(name, "regex"))
    if isinstance(value, (int, Decimal)):
        if spec.min is not None and value < spec.min:
            raise InvalidRecord(Violation(name, "min"))
        if spec.max is not None and value > spec.max:
            raise InvalidRecord(Violation(name, "max"))
        if spec.scale is not None and isinstance(value, Decimal):
            exponent = value.as_tuple().exponent
            if isinstance(exponent, int) and -exponent > spec.scale:
                raise InvalidRecord(Violation(name, "scale", f"more than {spec.scale} decimal places"))
    return value


def evaluate_fields(fields: list[CompiledField], context: Mapping[str, Any]) -> dict[str, Any]:
    """Evaluate fields in order; later fields may read earlier ones by name."""
    row: dict[str, Any] = {}
    scope = dict(context)  # the record's fields, shadowed by evaluated fields as they come
    for field in fields:
        name = field.spec.name
        source = field.source_name
        if source is not None:
            value = scope.get(source)
        else:
            try:
                value = field.evaluate(scope)
            except EvaluationError as exc:
                raise InvalidRecord(Violation(name, "expression", str(exc))) from None
        # Fast path, inline for its cost: a plain string within its length bounds and pattern is
        # valid as it is; anything else gets the full rules of check_value.
        if not (field.plain_string and type(value) is str and field.min_length <= len(value) <= field.max_length
                and (field.pattern is None or field.pattern.fullmatch(value))):
            value = check_value(field, value)
        row[name] = scope[name] = value
    return row
