"""A decoded source record and its coordinates in the log."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


# Not frozen: a frozen dataclass costs four times as much to build, and two are built per record.
# Nothing mutates a record after construction.
@dataclass(slots=True)
class SourceRecord:
    topic: str
    partition: int
    offset: int
    event_time_ms: int
    value: dict[str, Any]
    # Structured mode: the projected, validated row (or the Violation that stopped it).
    row: Any = None
    # Window scope, routing: the value in the form the repartition topic carries it, when the
    # decoder made one (codecs/carried.py); else the routing stage sends the bytes as read.
    carried: bytes | None = None


@dataclass(slots=True)
class RawRecord:
    """Bytes as read from Kafka; kept only until decoded (and for dead-lettering)."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...] = ()


# Set by ``stream-app dead-letters --redrive`` on a dead letter sent back to an input topic. A
# re-driven record whose window is already closed goes into the partition's current window (its
# own window's file is written), whatever ``lateRecords`` says: that is what re-driving it asks.
REDRIVE_HEADER = "stream-app-redrive"


def is_redriven(raw: RawRecord) -> bool:
    return bool(raw.headers) and any(key == REDRIVE_HEADER for key, _ in raw.headers)
