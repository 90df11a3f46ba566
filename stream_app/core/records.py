"""A decoded source record and its coordinates in the log."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


# Not frozen: a frozen dataclass costs four times as much to build, and two are built per record.
# Nothing mutates a record after construction.  Each record class writes its ``__init__`` (so
# ``init=False``): compiled by mypyc, it builds a record in a fifth of the time of the one
# dataclasses generates, which stays interpreted Python.
@dataclass(slots=True, init=False)
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

    def __init__(self, topic: str, partition: int, offset: int, event_time_ms: int, value: dict[str, Any],
                 row: Any = None, carried: bytes | None = None) -> None:
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.event_time_ms = event_time_ms
        self.value = value
        self.row = row
        self.carried = carried

    def __reduce__(self) -> tuple[type[SourceRecord], tuple[Any, ...]]:
        # the memory spill pickles records (core/spool.py); compiled, the class's own __new__
        # would call __init__ without arguments
        return SourceRecord, (self.topic, self.partition, self.offset, self.event_time_ms, self.value, self.row,
                              self.carried)


@dataclass(slots=True, init=False)
class RawRecord:
    """Bytes as read from Kafka; kept only until decoded (and for dead-lettering)."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...] = ()

    def __init__(self, topic: str, partition: int, offset: int, timestamp_ms: int | None, key: bytes | None,
                 value: bytes | None, headers: tuple[tuple[str, bytes | None], ...] = ()) -> None:
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.timestamp_ms = timestamp_ms
        self.key = key
        self.value = value
        self.headers = headers

    def __reduce__(self) -> tuple[type[RawRecord], tuple[Any, ...]]:
        return RawRecord, (self.topic, self.partition, self.offset, self.timestamp_ms, self.key, self.value,
                           self.headers)


# Set by ``stream-app dead-letters --redrive`` on a dead letter sent back to an input topic. A
# re-driven record whose window is already closed goes into the partition's current window (its
# own window's file is written), whatever ``lateRecords`` says: that is what re-driving it asks.
REDRIVE_HEADER = "stream-app-redrive"


def is_redriven(raw: RawRecord) -> bool:
    return bool(raw.headers) and any(key == REDRIVE_HEADER for key, _ in raw.headers)
