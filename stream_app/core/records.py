"""A decoded source record and its coordinates in the log."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(slots=True, frozen=True)
class SourceRecord:
    topic: str
    partition: int
    offset: int
    event_time_ms: int
    value: dict[str, Any]
    # Structured mode: the projected, validated row (or the Violation that stopped it).
    row: Any = None


@dataclass(slots=True, frozen=True)
class RawRecord:
    """Bytes as read from Kafka; kept only until decoded (and for dead-lettering)."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...] = ()
