"""Template mode: header / record / footer / file-name templates in a Jinja2 sandbox.

Only what the templates produce ends up in the file: no metadata is injected.  Every variable
is a function of the file cut (window, part, records in offset order), never of the wall clock,
so the same records always render the same bytes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from itertools import chain
from typing import Any

from jinja2 import StrictUndefined, Template, TemplateError, nodes
from jinja2.sandbox import SandboxedEnvironment

from stream_app.core.assembly import DEFAULT_VARIABLES, AssembledFile, AssemblyError, FileVariables
from stream_app.core.decimals import EXACT, INEXACT, NotExact, exact_decimal, quantize
from stream_app.core.limits import Weigher
from stream_app.core.naming import check_file_name
from stream_app.core.records import SourceRecord
from stream_app.core.spool import MemorySpool, Spool
from stream_app.core.windows import FileCut, FileKey


class FilterError(ValueError):
    """Raised by our template filters; its message describes the problem, never the value."""


def _to_datetime(value: Any) -> datetime:
    if isinstance(value, date) and not isinstance(value, datetime):  # a business date
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, int):
        return datetime.fromtimestamp(value / 1000, tz=UTC)
    raise FilterError("expected a datetime or epoch milliseconds")


def _to_decimal(value: Any) -> Decimal:
    if isinstance(value, Decimal):
        return value
    if isinstance(value, (int, str)) and not isinstance(value, bool):
        try:
            return exact_decimal(value)
        except NotExact as exc:
            raise FilterError(str(exc)) from None
    raise FilterError("money must be a Decimal, int or numeric string, never float")


def filter_ts(value: Any, fmt: str = "%Y-%m-%dT%H:%M:%SZ") -> str:
    return _to_datetime(value).astimezone(UTC).strftime(fmt)


def filter_money(value: Any, places: int = 2) -> str:
    amount = quantize(value if type(value) is Decimal else _to_decimal(value), places)
    # str() of a Decimal with exponent -places (0..6) is already plain notation, and cheaper
    # than format(); beyond that str() could switch to scientific notation.
    return str(amount) if 0 <= places <= 6 else format(amount, "f")


def filter_minor_units(value: Any, places: int = 2) -> str:
    """Amount as an integer count of minor units (12.34 -> '1234'), common in clearing files."""
    return format(quantize(_to_decimal(value).scaleb(places, EXACT), 0), "f")


def filter_pad(value: Any, width: int, align: str = "left", fill: str = " ") -> str:
    text = "" if value is None else str(value)
    if len(text) > width:
        raise FilterError(f"value of length {len(text)} does not fit a field of width {width}")
    if align == "right":
        return text.rjust(width, fill)
    if align == "left":
        return text.ljust(width, fill)
    raise FilterError("align must be 'left' or 'right'")


class RecordSandbox(SandboxedEnvironment):
    """The sandbox, with record fields found first.

    Jinja resolves ``record.amount`` by trying the attribute, catching AttributeError, then the
    item: an exception per field access, a third of the render time of a record line.  For a plain
    dict a present key wins (item access is always safe in the sandbox); everything else, dict
    methods included when no key has that name, goes through the sandbox's checks unchanged.
    """

    def getattr(self, obj: Any, attribute: str) -> Any:
        if type(obj) is dict:
            try:
                return obj[attribute]
            except KeyError:
                pass
        return super().getattr(obj, attribute)


def _plain_decimal(value: Any) -> Any:
    """Every Decimal a template prints is in plain notation (never 1E+3 or 1E-7), as in totals."""
    return format(value, "f") if type(value) is Decimal else value


def make_environment() -> SandboxedEnvironment:
    env = RecordSandbox(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True,
                        finalize=_plain_decimal)
    env.filters.update(ts=filter_ts, money=filter_money, minor_units=filter_minor_units, pad=filter_pad)
    return env


@dataclass(frozen=True, slots=True)
class CurrencyTotal:
    """Totals of one currency.  ``amount`` is the signed net (records matched by
    ``totals.negative`` count negative); ``credit``/``debit`` are the gross sums of the positive
    and negative amounts, ``indicator`` is ``C`` for a net of zero or more, else ``D``."""

    count: int
    amount: Decimal
    credit: Decimal = Decimal(0)
    debit: Decimal = Decimal(0)

    @property
    def indicator(self) -> str:
        return "C" if self.amount >= 0 else "D"

    @property
    def net(self) -> Decimal:
        """The absolute net amount, to print beside ``indicator``."""
        return abs(self.amount)


class Totals:
    """Totals of a part.  ``amount`` exists only when the part has a single currency: a sum
    across currencies is not an amount."""

    __slots__ = ("count", "by_currency", "_amount")

    def __init__(self, count: int, amount: Decimal, by_currency: dict[str, CurrencyTotal]) -> None:
        self.count = count
        self.by_currency = by_currency
        self._amount = amount

    @property
    def amount(self) -> Decimal:
        if len(self.by_currency) > 1:
            raise FilterError("totals.amount would add up different currencies; use totals.by_currency")
        return self._amount


class TotalsAccumulator:
    """Folds record amounts into ``Totals`` one record at a time (Decimal only)."""

    def __init__(self, amount_field: str, currency_field: str | None,
                 negative: tuple[str, frozenset[str]] | None = None) -> None:
        self._amount_field = amount_field
        self._currency_field = currency_field
        self._negative = negative
        self._count = 0
        self._total = Decimal(0)
        self._per_ccy: dict[str, list] = {}

    def add(self, value: Mapping[str, Any]) -> None:
        try:
            amount = value[self._amount_field]
            if type(amount) is not Decimal:
                amount = _to_decimal(amount)
        except (KeyError, FilterError):
            raise AssemblyError(f"totals: field {self._amount_field!r} is missing or not a decimal",
                                "BAD_AMOUNT") from None
        if self._negative is not None and value.get(self._negative[0]) in self._negative[1]:
            amount = -amount  # exact: negation changes no digit
        add = EXACT.add
        try:
            self._count += 1
            self._total = add(self._total, amount)
            if self._currency_field is not None:
                currency = value.get(self._currency_field)
                if type(currency) is not str:  # JSON input may hold anything: keyed by its text
                    currency = str(currency)
                slot = self._per_ccy.get(currency)
                if slot is None:
                    slot = self._per_ccy[currency] = [0, Decimal(0), Decimal(0), Decimal(0)]
                slot[0] += 1
                slot[1] = add(slot[1], amount)
                if amount >= 0:
                    slot[2] = add(slot[2], amount)
                else:
                    slot[3] = EXACT.subtract(slot[3], amount)
        except INEXACT:
            raise AssemblyError(f"totals: the sum of {self._amount_field!r} is not exact within "
                                f"{EXACT.prec} digits", "INEXACT_TOTAL") from None

    def result(self) -> Totals:
        by_currency = {c: CurrencyTotal(n, a, cr, db) for c, (n, a, cr, db) in sorted(self._per_ccy.items())}
        return Totals(self._count, self._total, by_currency)


class FileNamer:
    """Renders ``fileNameTemplate`` for a file key; the result is always a safe plain name."""

    def __init__(self, template: str, variables: FileVariables = DEFAULT_VARIABLES) -> None:
        self._variables = variables
        try:
            self._template = make_environment().from_string(template)
        except TemplateError as exc:
            raise AssemblyError(f"fileNameTemplate: {exc}", "TEMPLATE_SYNTAX") from None

    def name(self, key: FileKey, part: int, record_count: int) -> str:
        try:
            name = self._template.render(self._variables.context(key, part, record_count))
        except Exception as exc:
            raise AssemblyError(f"fileNameTemplate: {type(exc).__name__}: {_safe_message(exc)}") from None
        try:
            return check_file_name(name)
        except ValueError as exc:
            raise AssemblyError(f"fileNameTemplate: {exc}", "UNSAFE_FILE_NAME") from None


# Records rendered per call of the batch template: one Jinja context per batch, not per record.
RENDER_BATCH = 500
_BATCH_VAR = "_stream_app_batch"
# Constructs whose meaning changes inside a for loop (``loop``) or that a loop body cannot hold.
_UNBATCHABLE = (nodes.Extends, nodes.Block, nodes.Import, nodes.FromImport, nodes.Include)


def batch_template(env: SandboxedEnvironment, record_source: str) -> Template | None:
    """The record template wrapped in a loop over a batch, or None when that could change output.

    Rendering ``{% for record, seq, source in batch %}BODY{% endfor %}`` once gives the same text
    as rendering BODY once per record (no whitespace control is added), at a fraction of the cost.
    """
    tree = env.parse(record_source)
    if any(True for _ in tree.find_all(_UNBATCHABLE)):
        return None
    if any(n.name in ("loop", _BATCH_VAR) for n in tree.find_all(nodes.Name)):
        return None
    return env.from_string(f"{{% for record, seq, source in {_BATCH_VAR} %}}{record_source}{{% endfor %}}")


def record_fields_read(env: SandboxedEnvironment, record_source: str, others: Sequence[str]) -> frozenset[str] | None:
    """The record fields the record template reads (``record.x``, ``record['x']``), or None when
    the templates may read any: ``record`` used whole (a filter, a loop, ``{% set %}``, a method
    call on it), ``records`` or ``record`` in ``others`` (header, footer, file name), or a
    construct that reaches other templates.  CarriedDecoder builds only these fields; a name in
    the set that a schema lacks makes it build all (codecs/carried.py)."""
    tree = env.parse(record_source)
    if any(True for _ in tree.find_all(_UNBATCHABLE)):
        return None
    fields: set[str] = set()
    read_by_field: set[int] = set()  # the ``record`` names that only select a field
    for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
        assert isinstance(node, (nodes.Getattr, nodes.Getitem))
        target = node.node
        if not (isinstance(target, nodes.Name) and target.name == "record"):
            continue
        if isinstance(node, nodes.Getattr):
            fields.add(node.attr)
        elif isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str):
            fields.add(node.arg.value)
        else:
            return None  # record[some_variable]
        read_by_field.add(id(target))
    if any(n.name == "record" and id(n) not in read_by_field for n in tree.find_all(nodes.Name)):
        return None
    for source in others:
        if any(n.name in ("record", "records") for n in env.parse(source).find_all(nodes.Name)):
            return None
    return frozenset(fields)


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
        variables: FileVariables = DEFAULT_VARIABLES,
        negative: tuple[str, frozenset[str]] | None = None,
    ) -> None:
        env = make_environment()
        self._sources = {"headerTemplate": header, "recordTemplate": record, "footerTemplate": footer}
        self.variables = variables
        self._namer = FileNamer(file_name, variables)
        self._compiled = {}
        for name, source in self._sources.items():
            try:
                self._compiled[name] = env.from_string(source)
            except TemplateError as exc:
                raise AssemblyError(f"{name}: {exc}", "TEMPLATE_SYNTAX") from None
        self._batch = batch_template(env, record)
        self._fields_read = record_fields_read(env, record, (header, footer, file_name))
        self._amount_field = amount_field
        self._currency_field = currency_field
        self._negative = negative
        self._encoding = encoding

    def _render(self, name: str, context: Mapping[str, Any]) -> str:
        try:
            return self._compiled[name].render(context)
        except Exception as exc:  # a template can raise anything; report its type, not data
            raise AssemblyError(f"{name}: {type(exc).__name__}: {_safe_message(exc)}") from None

    def file_name(self, key: FileKey, part: int, record_count: int) -> str:
        return self._namer.name(key, part, record_count)

    def fields_read(self) -> frozenset[str] | None:
        """The record fields a file of these templates depends on (None: any): what the record
        template reads and what the totals add up."""
        if self._fields_read is None:
            return None
        totals = {self._amount_field, *((self._currency_field,) if self._currency_field else ()),
                  *((self._negative[0],) if self._negative else ())}
        return self._fields_read | totals

    def detail_weigher(self) -> Weigher:
        """The bytes each record's line renders to, for ``maxBytesPerFile`` (core/limits.py): the
        record template in the context ``TemplatePart`` renders it in."""
        render, variables, encoding = self._compiled["recordTemplate"].render, self.variables, self._encoding
        contexts: dict[tuple[FileKey, int], dict[str, Any]] = {}

        def weigh(key: FileKey, part: int, record: SourceRecord, seq: int) -> int:
            context = contexts.get((key, part))
            if context is None:
                if len(contexts) > 64:
                    contexts.clear()
                context = contexts[(key, part)] = variables.context(key, part, 0)
            context["record"], context["seq"] = record.value, seq
            context["source"] = {"topic": record.topic, "partition": record.partition, "offset": record.offset}
            try:
                return len(render(context).encode(encoding))
            except Exception:
                return 0  # the part's write stops on this record's template error and names it

        return weigh

    def open_part(self, key: FileKey, part: int, spool: Spool,
                  records: list[Mapping[str, Any]] | None = None) -> TemplatePart:
        """A part being written; ``records`` (all values) is only offered to in-memory parts."""
        return TemplatePart(self, key, part, spool, records)

    def assemble(self, cut: FileCut) -> AssembledFile:
        values: list[Mapping[str, Any]] = [r.value for r in cut.records]
        part = self.open_part(cut.key, cut.part, MemorySpool(), values)
        for record in cut.records:
            part.append(record)
        return part.finish()


class TemplatePart:
    """Renders record lines into a spool as they come; header and footer at ``finish``."""

    def __init__(self, assembler: TemplateAssembler, key: FileKey, part: int, spool: Spool,
                 records: list[Mapping[str, Any]] | None) -> None:
        self._assembler = assembler
        self._key = key
        self._part = part
        self._spool = spool
        self._records = records
        self._totals = TotalsAccumulator(assembler._amount_field, assembler._currency_field, assembler._negative)
        self._context = assembler.variables.context(key, part, 0)
        self._render_record = assembler._compiled["recordTemplate"].render
        self._batch = assembler._batch
        self._pending: list[tuple[Mapping[str, Any], int, dict[str, Any]]] = []
        self._error: AssemblyError | None = None
        self.count = 0

    def append(self, record: SourceRecord) -> None:
        if self._error is not None:
            return  # the part already failed; finish() reports it
        self.count += 1
        try:
            self._totals.add(record.value)
        except AssemblyError as exc:
            self._render_pending()  # an earlier record's template error comes first
            self._error = self._error or exc
            return
        self._pending.append((record.value, self.count,
                              {"topic": record.topic, "partition": record.partition, "offset": record.offset}))
        if len(self._pending) >= RENDER_BATCH:
            self._render_pending()

    def _render_pending(self) -> None:
        pending, self._pending = self._pending, []
        if not pending or self._error is not None:
            return
        encoding = self._assembler._encoding
        if self._batch is not None:
            self._context[_BATCH_VAR] = pending
            try:
                self._spool.write(self._batch.render(self._context).encode(encoding))
                return
            except Exception:
                pass  # render one by one below to name the record at fault
            finally:
                del self._context[_BATCH_VAR]
        context = self._context
        for value, seq, source in pending:
            context["record"], context["seq"], context["source"] = value, seq, source
            try:
                self._spool.write(self._render_record(context).encode(encoding))
            except Exception as exc:
                where = (source["topic"], source["partition"], source["offset"])
                self._error = AssemblyError(
                    f"recordTemplate at {where[0]}/{where[1]}@{where[2]}: {type(exc).__name__}: {_safe_message(exc)}",
                    source=where)
                return

    def finish(self) -> AssembledFile:
        self._render_pending()
        if self._error is not None:
            raise self._error
        assembler = self._assembler
        context = assembler.variables.context(self._key, self._part, self.count)
        context["totals"] = self._totals.result()
        if self._records is not None:
            context["records"] = self._records
        enc = assembler._encoding
        header = assembler._render("headerTemplate", context).encode(enc)
        footer = assembler._render("footerTemplate", context).encode(enc)
        name = assembler.file_name(self._key, self._part, self.count)
        spool = self._spool
        return AssembledFile(name, lambda: chain((header,), spool.chunks(), (footer,)), self.count)

    def discard(self) -> None:
        self._spool.discard()


def _safe_message(exc: Exception) -> str:
    # Jinja's undefined/security errors name attributes, not values; others are reduced to type
    # information so that a record's contents never reach a log line or journal event.
    if isinstance(exc, (TemplateError, FilterError)):
        return str(exc)
    return "see template"
