"""How much one part may hold: records, an absolute amount per currency, bytes.

Parts are filled greedily in file order: a record goes into the current part unless the part
already holds something and the record would take it over a limit, in which case the part is
cut before it (reason ``amount`` or ``size``) and the record starts the next one; a part that
reaches ``maxRecordsPerFile`` is cut after its last record (reason ``count``).  A greedy split is
a function of the records alone, and the split of what follows a cut is the tail of the whole
split, so a restart that resumes after the written parts cuts the rest as the first run did,
and replay gives the same parts.

A record that alone is over a limit (an amount larger than ``maxAmountPerFile``) cannot be
split: it is a part of its own.

Bytes are the detail bytes a record renders to (its line, or its XML element), counted against
``maxBytesPerFile`` less the reserve kept for the header and trailer; the writer checks the
finished file against ``maxBytesPerFile`` itself (``FILE_TOO_LARGE``), so no file is ever larger.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Literal

from stream_app.core.records import SourceRecord

if TYPE_CHECKING:
    from stream_app.core.windows import FileKey

# The rendered detail bytes of a record as the ``seq``-th record of part ``part`` of ``key``.
Weigher = Callable[["FileKey", int, SourceRecord, int], int]
LimitReason = Literal["count", "amount", "size"]


@dataclass(frozen=True, slots=True)
class PartLimits:
    max_records: int
    max_amount: Decimal | None = None  # per currency, on absolute amounts
    amount_field: str = "amount"
    currency_field: str | None = "currency"
    max_detail_bytes: int | None = None  # maxBytesPerFile less the frame reserve
    weigh: Weigher | None = None
    max_file_bytes: int | None = None  # maxBytesPerFile: the writer refuses a larger file

    @property
    def beyond_count(self) -> bool:
        """Any limit besides the record count."""
        return self.max_amount is not None or self.max_detail_bytes is not None

    @property
    def value_fields(self) -> tuple[str, ...]:
        """The fields of a record's value that ``amount_of`` reads."""
        return (self.amount_field, *((self.currency_field,) if self.currency_field else ()))

    def amount_of(self, record: SourceRecord) -> tuple[str, Decimal]:
        value = record.value.get(self.amount_field)
        # not a Decimal (or int): the file's totals stop it as BAD_AMOUNT when it is assembled
        amount = abs(Decimal(value)) if isinstance(value, Decimal | int) and not isinstance(value, bool) else Decimal(0)
        currency = record.value.get(self.currency_field) if self.currency_field else None
        return ("" if currency is None else str(currency)), amount


@dataclass(slots=True)
class PartFill:
    """What the open part holds so far, against its limits."""

    limits: PartLimits
    key: FileKey
    part: int
    count: int = 0
    detail_bytes: int = 0
    amounts: dict[str, Decimal] = field(default_factory=dict)

    def refuses(self, record: SourceRecord) -> LimitReason | None:
        """Why ``record`` must start a new part (None: it goes into this one)."""
        limits = self.limits
        if not self.count or not limits.beyond_count:
            return None
        if limits.max_amount is not None:
            currency, amount = limits.amount_of(record)
            if self.amounts.get(currency, Decimal(0)) + amount > limits.max_amount:
                return "amount"
        if limits.max_detail_bytes is not None and limits.weigh is not None:
            if self.detail_bytes + limits.weigh(self.key, self.part, record, self.count + 1) > limits.max_detail_bytes:
                return "size"
        return None

    def add(self, record: SourceRecord) -> bool:
        """Take ``record``; True when the part is full by count (cut it now)."""
        limits = self.limits
        self.count += 1
        if limits.max_amount is not None:
            currency, amount = limits.amount_of(record)
            self.amounts[currency] = self.amounts.get(currency, Decimal(0)) + amount
        if limits.max_detail_bytes is not None and limits.weigh is not None:
            self.detail_bytes += limits.weigh(self.key, self.part, record, self.count)
        return self.count >= limits.max_records

    def reset(self, part: int) -> None:
        """The next part (``part``) begins."""
        self.part = part
        self.count = 0
        self.detail_bytes = 0
        self.amounts = {}


def split(records: Sequence[SourceRecord], limits: PartLimits, key: FileKey,
          first_part: int) -> list[tuple[list[SourceRecord], LimitReason]]:
    """``records`` (in file order) as parts ``first_part``, ..., each with the reason it ended
    (the last one's is ``count``: the caller gives it its own reason)."""
    if not limits.beyond_count:
        size = limits.max_records
        return [(list(records[i:i + size]), "count") for i in range(0, len(records), size)]
    parts: list[tuple[list[SourceRecord], LimitReason]] = []
    fill = PartFill(limits, key, first_part)
    current: list[SourceRecord] = []
    for record in records:
        reason = fill.refuses(record)
        if reason is not None:
            parts.append((current, reason))
            current = []
            fill.reset(first_part + len(parts))
        current.append(record)
        if fill.add(record):
            parts.append((current, "count"))
            current = []
            fill.reset(first_part + len(parts))
    if current:
        parts.append((current, "count"))
    return parts
