"""Decimal helpers shared by codecs, template filters and structured formatters.

Money is exact or an error, by one rule in every place:
* an amount has at most ``MAX_DIGITS`` digits (integer and fraction together, as SQL's
  DECIMAL(38)); exponent notation is normalised to plain notation at decode ("1E+3" is 1000,
  written 1000 in lines and totals alike);
* sums, differences and negations run in ``EXACT``: 60 digits, enough for 10**20 amounts of
  38 digits, with ``Inexact`` trapped, so a result that would be rounded raises instead.
"""

from __future__ import annotations

from decimal import (
    ROUND_HALF_EVEN,
    Context,
    Decimal,
    DivisionByZero,
    Inexact,
    InvalidOperation,
    Overflow,
)

MAX_DIGITS = 38
EXACT = Context(prec=60, rounding=ROUND_HALF_EVEN, traps=[InvalidOperation, Inexact, Overflow, DivisionByZero])
INEXACT = (Inexact, InvalidOperation, Overflow)  # what EXACT raises instead of rounding
_ONE = Decimal(1)


class NotExact(ValueError):
    """A decimal that cannot be held exactly (non-finite, too many digits)."""


def exact_decimal(value: Decimal | str | int) -> Decimal:
    """``value`` as a finite Decimal of at most MAX_DIGITS digits in plain notation, or NotExact."""
    try:
        number = value if type(value) is Decimal else Decimal(value)
    except (InvalidOperation, TypeError, ValueError):
        raise NotExact("is not a decimal number") from None
    if not number.is_finite():  # "NaN", "Infinity": never an amount
        raise NotExact("is not a finite decimal number")
    exponent = number.as_tuple().exponent
    assert isinstance(exponent, int)
    digits = max(number.adjusted() + 1, 1) + max(-exponent, 0)
    if digits > MAX_DIGITS:
        raise NotExact(f"has more than {MAX_DIGITS} digits")
    if exponent > 0:  # 1E+3 -> 1000: the integer it denotes, exactly
        number = number.quantize(_ONE, context=EXACT)
    return number

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
    if value.same_quantum(exponent):  # already ``places`` decimals (most amounts): nothing to round
        return value
    try:
        return value.quantize(exponent, rounding=ROUND_HALF_EVEN)
    except InvalidOperation:
        context = Context(prec=max(28, value.adjusted() + places + 2))
        return value.quantize(exponent, rounding=ROUND_HALF_EVEN, context=context)
