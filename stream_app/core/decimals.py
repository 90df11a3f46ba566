"""Decimal helpers shared by template filters and structured formatters."""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Context, Decimal, InvalidOperation

_QUANTA = {places: Decimal(1).scaleb(-places) for places in range(19)}


def quantum(places: int) -> Decimal:
    """``Decimal('1E-places')``, the quantize argument for ``places`` decimal places (cached)."""
    cached = _QUANTA.get(places)
    return cached if cached is not None else Decimal(1).scaleb(-places)


def quantize(value: Decimal, places: int) -> Decimal:
    """``value`` rounded half-even to ``places`` decimals, exact at any size.

    Decimal's default context holds 28 digits, so quantizing a larger amount raises
    InvalidOperation; the context here is as wide as the result needs.
    """
    exponent = quantum(places)
    try:
        return value.quantize(exponent, rounding=ROUND_HALF_EVEN)
    except InvalidOperation:
        context = Context(prec=max(28, value.adjusted() + places + 2))
        return value.quantize(exponent, rounding=ROUND_HALF_EVEN, context=context)
