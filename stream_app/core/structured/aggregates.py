"""A pack's aggregates (count, sum, min, max; grouped or not), folded one row at a time.

Sums are Decimal-exact (``EXACT``) or an error; groups come out sorted by key (None first).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any

from stream_app.core.assembly import AssemblyError
from stream_app.core.decimals import EXACT, INEXACT
from stream_app.core.structured.pack import AggregateSpec


def sort_key(key: tuple) -> tuple:
    return tuple((value is not None, value) for value in key)


class Fold:
    """count / sum / min / max of one aggregate, one row at a time (Decimal stays Decimal)."""

    __slots__ = ("fn", "field", "count", "value", "add", "zero")

    def __init__(self, spec: AggregateSpec, zero: Any = Decimal(0)) -> None:
        self.fn = spec.fn
        self.field = spec.field
        self.zero = zero  # the sum of no rows: 0 of the field's type
        self.count = 0
        self.value: Any = None
        # Bound once: a count needs no field, and the per-row call skips a branch on fn.
        self.add: Callable[[Mapping[str, Any]], None] = self._count if spec.fn == "count" else self._fold

    def _count(self, row: Mapping[str, Any]) -> None:
        self.count += 1

    def _fold(self, row: Mapping[str, Any]) -> None:
        self.count += 1
        value = row[self.field]  # type: ignore[index]
        if value is None:
            return
        if self.value is None:
            self.value = value
        elif self.fn == "sum":
            try:
                self.value = EXACT.add(self.value, value) if type(value) is Decimal else self.value + value
            except INEXACT:
                raise AssemblyError(f"aggregate sum of {self.field!r} is not exact within {EXACT.prec} digits",
                                    "INEXACT_TOTAL") from None
        elif self.fn == "min":
            self.value = min(self.value, value)
        else:
            self.value = max(self.value, value)

    def result(self) -> Any:
        if self.fn == "count":
            return self.count
        if self.fn == "sum" and self.value is None:
            return self.zero
        return self.value


class Aggregate:
    """One pack aggregate, grouped (dict of folds, sorted by key at the end) or not."""

    def __init__(self, spec: AggregateSpec, zero: Any = Decimal(0)) -> None:
        self.spec = spec
        self.zero = zero
        self._total = Fold(spec, zero)
        self._groups: dict[tuple, Fold] = {}
        self._group_by = tuple(spec.groupBy or ())
        self.add: Callable[[Mapping[str, Any]], None] = (
            self._total.add if not self._group_by else self._add_by_one if len(self._group_by) == 1 else self._add_grouped)

    def _add_by_one(self, row: Mapping[str, Any]) -> None:
        """``_add_grouped`` for one group field (per currency, the common case), its key built directly."""
        self._fold_of((row[self._group_by[0]],)).add(row)

    def _add_grouped(self, row: Mapping[str, Any]) -> None:
        self._fold_of(tuple([row[name] for name in self._group_by])).add(row)

    def _fold_of(self, key: tuple) -> Fold:
        fold = self._groups.get(key)
        if fold is None:
            fold = self._groups[key] = Fold(self.spec, self.zero)
        return fold

    def result(self) -> Any:
        if not self.spec.groupBy:
            return self._total.result()
        return {key: self._groups[key].result() for key in sorted(self._groups, key=sort_key)}
