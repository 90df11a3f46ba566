"""The mapping expression language of schema packs: paths, literals and a closed set of functions.

An expression is parsed with Python's ``ast`` module and compiled to a closure; only names
(dotted paths into the record), string/number/bool/null literals and calls of the functions
below are accepted.  Nothing is ever passed to ``eval``.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from stream_app.core.decimals import EXACT, INEXACT, NotExact, exact_decimal, quantize

Evaluator = Callable[[Mapping[str, Any]], Any]


class ExpressionError(ValueError):
    """An expression that does not parse or uses something outside the language."""


class EvaluationError(ValueError):
    """A function got an argument it cannot handle; the message never contains the value."""


def _dec(value: Any, fn: str) -> Decimal:
    if isinstance(value, Decimal):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return Decimal(value)
    if isinstance(value, str):
        try:
            return exact_decimal(value)
        except NotExact as exc:
            raise EvaluationError(f"{fn}() needs a decimal: the text {exc}") from None
    raise EvaluationError(f"{fn}() needs a decimal, got {type(value).__name__}")


def _str(value: Any, fn: str) -> str:
    if isinstance(value, str):
        return value
    raise EvaluationError(f"{fn}() needs a string, got {type(value).__name__}")


def _dt(value: Any, fn: str) -> datetime:
    if isinstance(value, date) and not isinstance(value, datetime):  # a business date: its midnight, UTC
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return datetime.fromtimestamp(value / 1000, tz=UTC)
        except (OverflowError, OSError, ValueError):  # beyond what a datetime holds (year 1..9999)
            raise EvaluationError(f"{fn}() got epoch milliseconds out of range") from None
    raise EvaluationError(f"{fn}() needs a datetime, got {type(value).__name__}")


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise EvaluationError(f"unknown time zone {name!r}") from None


def _quantize(value: Any, places: int) -> Decimal:
    return quantize(_dec(value, "quantize"), int(places))


def _substr(value: Any, start: int, length: int | None = None) -> str:
    text = _str(value, "substr")
    return text[start:] if length is None else text[start:start + length]


def _format_datetime(value: Any, fmt: str, tz: str = "UTC") -> str:
    return _dt(value, "format_datetime").astimezone(_zone(tz)).strftime(fmt)


def _to_date(value: Any, tz: str = "UTC") -> date:
    if isinstance(value, date) and not isinstance(value, datetime):
        return value
    return _dt(value, "to_date").astimezone(_zone(tz)).date()


def _if(condition: Any, then: Any, otherwise: Any) -> Any:
    if not isinstance(condition, bool):
        raise EvaluationError("if_() needs a boolean condition")
    return then if condition else otherwise


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, Decimal)):
        return format(value, "f") if isinstance(value, Decimal) else str(value)
    raise EvaluationError(f"text() cannot convert {type(value).__name__}")


FUNCTIONS: dict[str, Callable[..., Any]] = {
    "upper": lambda v: None if v is None else _str(v, "upper").upper(),
    "lower": lambda v: None if v is None else _str(v, "lower").lower(),
    "trim": lambda v: None if v is None else _str(v, "trim").strip(),
    "pad_left": lambda v, width, fill=" ": _str(v, "pad_left").rjust(int(width), fill),
    "pad_right": lambda v, width, fill=" ": _str(v, "pad_right").ljust(int(width), fill),
    "substr": _substr,
    "concat": lambda *parts: "".join("" if p is None else _str(p, "concat") for p in parts),
    "coalesce": lambda *values: next((v for v in values if v is not None and v != ""), None),
    "text": _text,
    "quantize": _quantize,
    # exact or an EvaluationError (EXACT traps Inexact; the call wrapper turns it into one)
    "minor_units": lambda v, places=2: int(_quantize(v, places).scaleb(int(places), EXACT)),
    "neg": lambda v: EXACT.minus(_dec(v, "neg")),
    "abs": lambda v: EXACT.abs(_dec(v, "abs")),
    "add": lambda a, b: EXACT.add(_dec(a, "add"), _dec(b, "add")),
    "sub": lambda a, b: EXACT.subtract(_dec(a, "sub"), _dec(b, "sub")),
    "format_datetime": _format_datetime,
    "to_date": _to_date,
    "to_timezone": lambda v, tz: _dt(v, "to_timezone").astimezone(_zone(tz)),
    "eq": lambda a, b: a == b,
    "lt": lambda a, b: _dec(a, "lt") < _dec(b, "lt"),
    "ge": lambda a, b: _dec(a, "ge") >= _dec(b, "ge"),
    "is_in": lambda v, *options: v in options,
    "if_": _if,
    "least": lambda *values: min(values),
    "greatest": lambda *values: max(values),
    # lookup(value, 'mapName'[, default]) is bound to the pack's maps at compile time
}


def _path_getter(path: tuple[str, ...]) -> Evaluator:
    if len(path) == 1:  # the common case: a field of the record (the scope is always a mapping)
        (name,) = path

        def get_name(ctx: Mapping[str, Any]) -> Any:
            return ctx.get(name)

        get_name.source_name = name  # type: ignore[attr-defined]  # lets callers inline the lookup
        return get_name

    def get(ctx: Mapping[str, Any]) -> Any:
        value: Any = ctx
        for part in path:
            if type(value) is not dict and not isinstance(value, Mapping):  # dict first: the ABC check is slow
                return None
            value = value.get(part)
        return value

    return get


def _dotted(node: ast.AST) -> tuple[str, ...] | None:
    if isinstance(node, ast.Name):
        return (node.id,)
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return None if base is None else (*base, node.attr)
    return None


def compile_expression(source: str, maps: Mapping[str, Mapping[str, Any]] | None = None) -> tuple[Evaluator, set[str]]:
    """Compile ``source``; return the evaluator and the top-level names it reads."""
    maps = maps or {}
    try:
        tree = ast.parse(source.strip(), mode="eval")
    except SyntaxError as exc:
        raise ExpressionError(f"does not parse: {exc.msg}") from None
    names: set[str] = set()

    def build(node: ast.AST) -> Evaluator:
        if isinstance(node, ast.Constant) and (node.value is None or isinstance(node.value, (str, int, bool))):
            value = node.value
            return lambda ctx: value
        if isinstance(node, ast.Constant) and isinstance(node.value, float):
            raise ExpressionError("float literals are not allowed (write decimals as strings)")
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and isinstance(node.operand, ast.Constant) \
                and isinstance(node.operand.value, int):
            value = -node.operand.value
            return lambda ctx: value
        path = _dotted(node)
        if path is not None:
            if path[0] in FUNCTIONS or path[0] == "lookup":
                raise ExpressionError(f"{path[0]} is a function; call it")
            names.add(path[0])
            return _path_getter(path)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.keywords:
            name = node.func.id
            args = [build(a) for a in node.args]
            if name == "lookup":
                return _build_lookup(node, args, maps)
            fn = FUNCTIONS.get(name)
            if fn is None:
                raise ExpressionError(f"unknown function {name}()")

            def failed(exc: Exception) -> EvaluationError:
                if isinstance(exc, EvaluationError):
                    return exc
                if isinstance(exc, INEXACT):
                    return EvaluationError(f"{name}(): the result is not exact within {EXACT.prec} digits")
                return EvaluationError(f"{name}() failed: {type(exc).__name__}")

            # Calls of one to three arguments, the common ones, without building an argument list.
            if len(args) == 1:
                (only,) = args

                def call(ctx: Mapping[str, Any]) -> Any:
                    try:
                        return fn(only(ctx))
                    except (TypeError, ValueError, ArithmeticError) as exc:
                        raise failed(exc) from None
            elif len(args) == 2:
                first, second = args

                def call(ctx: Mapping[str, Any]) -> Any:
                    try:
                        return fn(first(ctx), second(ctx))
                    except (TypeError, ValueError, ArithmeticError) as exc:
                        raise failed(exc) from None
            elif len(args) == 3:  # if_(cond, a, b), is_in(v, x, y): a fifth of a pack's projection
                first, second, third = args

                def call(ctx: Mapping[str, Any]) -> Any:
                    try:
                        return fn(first(ctx), second(ctx), third(ctx))
                    except (TypeError, ValueError, ArithmeticError) as exc:
                        raise failed(exc) from None
            else:
                def call(ctx: Mapping[str, Any]) -> Any:
                    try:
                        return fn(*[a(ctx) for a in args])
                    except (TypeError, ValueError, ArithmeticError) as exc:
                        raise failed(exc) from None

            return call
        raise ExpressionError(f"{type(node).__name__} is not allowed in an expression")

    return build(tree.body), names


def _build_lookup(node: ast.Call, args: list[Evaluator], maps: Mapping[str, Mapping[str, Any]]) -> Evaluator:
    if len(args) not in (2, 3) or not isinstance(node.args[1], ast.Constant) or not isinstance(node.args[1].value, str):
        raise ExpressionError("lookup(value, 'mapName'[, default]) needs a map name literal")
    map_name = node.args[1].value
    if map_name not in maps:
        raise ExpressionError(f"lookup() refers to undefined map {map_name!r}")
    table = maps[map_name]
    key_of = args[0]
    default = args[2] if len(args) == 3 else None

    def lookup(ctx: Mapping[str, Any]) -> Any:
        key = key_of(ctx)
        if not isinstance(key, (str, int, bool)) and key is not None:
            raise EvaluationError(f"lookup() needs a text key, got {type(key).__name__}")
        if key in table:
            return table[key]  # type: ignore[index]  # a map's keys are text; others never match
        if default is None:
            raise EvaluationError(f"lookup() found no entry in map {map_name!r}")
        return default(ctx)

    return lookup
