"""Record projection: input record -> typed, validated row, following the pack's field rules."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

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

    def __reduce__(self) -> tuple[type[Violation], tuple[str, str, str]]:
        # Compiled, a frozen dataclass cannot be unpickled field by field (the prepare helper
        # sends violations, the memory spill keeps them): rebuild it through its constructor.
        return (Violation, (self.field, self.rule, self.detail))


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
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if kind == "date" and isinstance(value, date) and not isinstance(value, datetime):
        return value
    if kind == "bool" and isinstance(value, bool):
        return value
    raise InvalidRecord(Violation(field.spec.name, "type", f"expected {kind}, got {type(value).__name__}"))


def check_value(field: CompiledField, value: Any) -> Any:
    """Coerce and validate one value; return it typed or raise ``InvalidRecord``.

    ``RowProjector`` passes valid plain strings, the common case, without calling this, and each
    field's ``field_checker`` accepts its common valid values before falling back to it.
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


def field_checker(field: CompiledField) -> Callable[[Any], Any]:
    """``check_value`` for one field, with the field's common valid case accepted up front.

    Each shortcut accepts only values the full rules accept unchanged; everything else goes
    through ``check_value``, so errors and results are the same as without the shortcut.
    """
    spec = field.spec

    def full(value: Any) -> Any:
        return check_value(field, value)

    if spec.enum is not None:
        if spec.type != "string":
            return full
        # The enum values that pass every other rule: a string among them is valid as it is.
        allowed = frozenset(v for v in spec.enum if v and field.min_length <= len(v) <= field.max_length
                            and (field.pattern is None or field.pattern.fullmatch(v)))

        def enum_value(value: Any) -> Any:
            return value if type(value) is str and value in allowed else check_value(field, value)

        return enum_value
    if spec.type == "datetime":
        def aware_datetime(value: Any) -> Any:
            return value if type(value) is datetime and value.tzinfo is not None else check_value(field, value)

        return aware_datetime
    if spec.type == "decimal":
        low, high = spec.min, spec.max
        # A value with exactly ``scale`` places (a quantized amount, the common case) passes the
        # scale rule without ``as_tuple``, which builds a tuple of every digit: five times the cost.
        scale = spec.scale if spec.scale is not None else -1
        places = Decimal(1).scaleb(-scale) if scale >= 0 else None

        def decimal_value(value: Any) -> Any:
            if type(value) is Decimal and value.is_finite() and (low is None or value >= low) \
                    and (high is None or value <= high) and (places is None or value.same_quantum(places)
                                                             or -int(value.as_tuple().exponent) <= scale):
                return value
            if type(value) is int:  # e.g. the 0 of if_(..., 0, Amount): exact, no decimal places
                number = Decimal(value)
                if (low is None or number >= low) and (high is None or number <= high):
                    return number
            return check_value(field, value)

        return decimal_value
    return full


class RowProjector:
    """Evaluates a list of fields in order over a context; later fields may read earlier ones."""

    def __init__(self, fields: list[CompiledField]) -> None:
        # Per field, what the loop needs, unpacked once instead of read from attributes per row.
        self._plan = [(f.spec.name, f.source_name, f.evaluate, f.plain_string, f.min_length, f.max_length,
                       f.pattern, field_checker(f)) for f in fields]

    def evaluate(self, context: Mapping[str, Any]) -> dict[str, Any]:
        row: dict[str, Any] = {}
        scope = dict(context)  # the record's fields, shadowed by evaluated fields as they come
        for name, source, evaluate, plain_string, min_length, max_length, pattern, check in self._plan:
            if source is not None:
                value = scope.get(source)
            else:
                try:
                    value = evaluate(scope)
                except EvaluationError as exc:
                    raise InvalidRecord(Violation(name, "expression", str(exc))) from None
            # Fast path, inline for its cost: a plain string within its length bounds and pattern
            # is valid as it is; anything else gets the field's checker.
            if not (plain_string and type(value) is str and min_length <= len(value) <= max_length
                    and (pattern is None or pattern.fullmatch(value))):
                value = check(value)
            row[name] = scope[name] = value
        return row


def evaluate_fields(fields: list[CompiledField], context: Mapping[str, Any]) -> dict[str, Any]:
    """Evaluate fields in order; later fields may read earlier ones by name."""
    return RowProjector(fields).evaluate(context)
