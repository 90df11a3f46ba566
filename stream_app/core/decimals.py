"""Decimal helpers shared by template filters and structured formatters."""

from __future__ import annotations

from decimal import Decimal

_QUANTA = {places: Decimal(1).scaleb(-places) for places in range(19)}


def quantum(places: int) -> Decimal:
    """``Decimal('1E-places')``, the quantize argument for ``places`` decimal places (cached)."""
    cached = _QUANTA.get(places)
    return cached if cached is not None else Decimal(1).scaleb(-places)
