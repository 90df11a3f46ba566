"""Template mode: header / record / footer / file-name templates in a Jinja2 sandbox.

Only what the templates produce ends up in the file: no metadata is injected.  Every variable
is a function of the file cut (window, part, records in offset order), never of the wall clock,
so the same records always render the same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Any, Iterator, Mapping

from jinja2 import StrictUndefined, TemplateError
from jinja2.sandbox import SandboxedEnvironment

from stream_app.core.naming import check_file_name
from stream_app.core.windows import FileCut, FileKey


class FilterError(ValueError):
    """Raised by our template filters; its message describes the problem, never the value."""


class AssemblyError(Exception):
    """The file for a cut cannot be produced (template error, bad data).  Never holds values."""

    def __init__(self, message: str, error_class: str = "TEMPLATE_ERROR",
                 source: tuple[str, int, int] | None = None) -> None:
        super().__init__(message)
        self.error_class = error_class
        self.source = source  # (topic, partition, offset) of the record at fault, when one is


@dataclass(frozen=True, slots=True)
class AssembledFile:
    name: str
    body: bytes
    records: int


def _to_datetime(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    if isinstance(value, int):
        return datetime.fromtimestamp(value / 1000, tz=timezone.utc)
    raise FilterError("expected a datetime or epoch milliseconds")


def _to_decimal(value: Any) -> Decimal:
    if isinstance(value, Decimal):
        return value
    if isinstance(value, (int, str)) and not isinstance(value, bool):
        try:
            return Decimal(value)
        except InvalidOperation:
            raise FilterError("not a decimal number") from None
    raise FilterError("money must be a Decimal, int or numeric string, never float")


def filter_ts(value: Any, fmt: str = "%Y-%m-%dT%H:%M:%SZ") -> str:
    return _to_datetime(value).astimezone(timezone.utc).strftime(fmt)


def filter_money(value: Any, places: int = 2) -> str:
    quantum = Decimal(1).scaleb(-places)
    return format(_to_decimal(value).quantize(quantum, rounding=ROUND_HALF_EVEN), "f")


def filter_minor_units(value: Any, places: int = 2) -> str:
    """Amount as an integer count of minor units (12.34 -> '1234'), common in clearing files."""
    return format(_to_decimal(value).scaleb(places).quantize(Decimal(1), rounding=ROUND_HALF_EVEN), "f")


def filter_pad(value: Any, width: int, align: str = "left", fill: str = " ") -> str:
    text = "" if value is None else str(value)
    if len(text) > width:
        raise FilterError(f"value of length {len(text)} does not fit a field of width {width}")
    if align == "right":
        return text.rjust(width, fill)
    if align == "left":
        return text.ljust(width, fill)
    raise FilterError("align must be 'left' or 'right'")


def make_environment() -> SandboxedEnvironment:
    env = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)
    env.filters.update(ts=filter_ts, money=filter_money, minor_units=filter_minor_units, pad=filter_pad)
    return env


@dataclass(frozen=True, slots=True)
class CurrencyTotal:
    count: int
    amount: Decimal


@dataclass(frozen=True, slots=True)
class Totals:
    count: int
    amount: Decimal
    by_currency: dict[str, CurrencyTotal]


def compute_totals(records: list[Mapping[str, Any]], amount_field: str, currency_field: str | None) -> Totals:
    total = Decimal(0)
    per_ccy: dict[str, list] = {}
    for value in records:
        try:
            amount = _to_decimal(value[amount_field])
        except (KeyError, FilterError):
            raise AssemblyError(f"totals: field {amount_field!r} is missing or not a decimal", "BAD_AMOUNT") from None
        total += amount
        if currency_field is not None:
            ccy = str(value.get(currency_field))
            slot = per_ccy.setdefault(ccy, [0, Decimal(0)])
            slot[0] += 1
            slot[1] += amount
    by_currency = {c: CurrencyTotal(n, a) for c, (n, a) in sorted(per_ccy.items())}
    return Totals(len(records), total, by_currency)


def file_context(key: FileKey, part: int, record_count: int) -> dict[str, Any]:
    """Variables every template sees (the file name template sees only these)."""
    return {
        "topic": key.topic,
        "partition": key.partition,
        "window_start": _to_datetime(key.window_start_ms),
        "window_end": _to_datetime(key.window_end_ms),
        "part": part,
        "group": dict(key.group),
        "file_key": key.id,
        "record_count": record_count,
    }


class FileNamer:
    """Renders ``fileNameTemplate`` for a file key; the result is always a safe plain name."""

    def __init__(self, template: str) -> None:
        try:
            self._template = make_environment().from_string(template)
        except TemplateError as exc:
            raise AssemblyError(f"fileNameTemplate: {exc}", "TEMPLATE_SYNTAX") from None

    def name(self, key: FileKey, part: int, record_count: int) -> str:
        try:
            name = self._template.render(file_context(key, part, record_count))
        except Exception as exc:
            raise AssemblyError(f"fileNameTemplate: {type(exc).__name__}: {_safe_message(exc)}") from None
        try:
            return check_file_name(name)
        except ValueError as exc:
            raise AssemblyError(f"fileNameTemplate: {exc}", "UNSAFE_FILE_NAME") from None


class TemplateAssembler:
    """Renders a file cut to bytes with the four templates of template mode."""

    def __init__(
        self,
        header: str,
        record: str,
        footer: str,
        file_name: str,
        amount_field: str = "amount",
        currency_field: str | None = "currency",
        encoding: str = "utf-8",
    ) -> None:
        env = make_environment()
        self._sources = {"headerTemplate": header, "recordTemplate": record, "footerTemplate": footer}
        self._namer = FileNamer(file_name)
        self._compiled = {}
        for name, source in self._sources.items():
            try:
                self._compiled[name] = env.from_string(source)
            except TemplateError as exc:
                raise AssemblyError(f"{name}: {exc}", "TEMPLATE_SYNTAX") from None
        self._amount_field = amount_field
        self._currency_field = currency_field
        self._encoding = encoding

    def _render(self, name: str, context: Mapping[str, Any]) -> str:
        try:
            return self._compiled[name].render(context)
        except Exception as exc:  # a template can raise anything; report its type, not data
            raise AssemblyError(f"{name}: {type(exc).__name__}: {_safe_message(exc)}") from None

    def file_name(self, key: FileKey, part: int, record_count: int) -> str:
        return self._namer.name(key, part, record_count)

    def assemble(self, cut: FileCut) -> AssembledFile:
        values = [r.value for r in cut.records]
        context = file_context(cut.key, cut.part, len(values))
        context["totals"] = compute_totals(values, self._amount_field, self._currency_field)
        context["records"] = values
        name = self.file_name(cut.key, cut.part, len(values))
        return AssembledFile(name, b"".join(self._render_body(cut, context)), len(values))

    def _render_body(self, cut: FileCut, context: dict[str, Any]) -> Iterator[bytes]:
        enc = self._encoding
        yield self._render("headerTemplate", context).encode(enc)
        record_context = dict(context)
        render = self._compiled["recordTemplate"].render
        for seq, rec in enumerate(cut.records, start=1):
            record_context["record"] = rec.value
            record_context["seq"] = seq
            record_context["source"] = {"topic": rec.topic, "partition": rec.partition, "offset": rec.offset}
            try:
                yield render(record_context).encode(enc)
            except Exception as exc:
                raise AssemblyError(
                    f"recordTemplate at {rec.topic}/{rec.partition}@{rec.offset}: "
                    f"{type(exc).__name__}: {_safe_message(exc)}"
                ) from None
        yield self._render("footerTemplate", context).encode(enc)


def _safe_message(exc: Exception) -> str:
    # Jinja's undefined/security errors name attributes, not values; others are reduced to type
    # information so that a record's contents never reach a log line or journal event.
    if isinstance(exc, (TemplateError, FilterError)):
        return str(exc)
    return "see template"
