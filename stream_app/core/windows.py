"""File keys, event-time windows and the per-partition state machine that cuts files.

(Longer than 400 lines on purpose: the state machine and the facts, checkpoints and cuts it
reads and writes are one contract, and its restart-equivalence proof is easiest to check in
one place.)

Files are scoped per source partition: a file key is (topic, partition, window, group values),
so the consumer group's partition ownership is also file ownership and no two workers ever write
the same file.  Everything a file contains is a function of the partition's record sequence:

* a record belongs to the tumbling window of its event time (plus optional group fields);
* a window's records are numbered in offset order and part ``n`` holds records
  ``n*maxRecordsPerFile ..``: count rolls are reproducible;
* the partition watermark is the largest event time seen so far; a window closes when the
  watermark reaches ``end + grace`` and a record arriving for a closed window is late.

Two cuts depend on the wall clock and are therefore *not* a function of the records: the
optional ``flushIntervalMs`` roll and the idle close.  Their results are still exact on replay
because every finalized part records its offset ranges.

Restart contract: the driver persists, per finalized part, its offset ranges (``WindowFacts``)
and, per partition, a ``Checkpoint`` (commit offset and the watermark over everything below it).
A windower built from them skips records below the checkpoint and records already inside a
finalized part, and otherwise behaves exactly as the original run did.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from stream_app.core.cycles import ClearingCycles
from stream_app.core.limits import PartFill, PartLimits
from stream_app.core.records import SourceRecord
from stream_app.core.spool import RecordSpill

CutReason = Literal["count", "amount", "size", "watermark", "interval", "idle", "pressure"]


class MissingGroupField(ValueError):
    """A record lacks a field the file key is grouped by."""

    def __init__(self, field_name: str) -> None:
        super().__init__(f"record has no value for groupBy field {field_name!r}")
        self.field_name = field_name


@dataclass(frozen=True, slots=True, order=True)
class FileKey:
    """What one file (and its parts) is about.

    ``fileScope: partition``: (topic, partition, window, group values).  ``fileScope: window``
    (business files): topic and partition are None, the key spans every input partition.
    """

    topic: str | None
    partition: int | None
    window_start_ms: int
    window_end_ms: int
    group: tuple[tuple[str, str], ...] = ()

    @property
    def per_partition(self) -> bool:
        return self.partition is not None

    @property
    def id(self) -> str:
        parts = [self.topic, str(self.partition)] if self.partition is not None else []
        parts.append(str(self.window_start_ms))
        parts.extend(f"{name}={value}" for name, value in self.group)
        return "/".join(str(p) for p in parts)

    @property
    def tp(self) -> tuple[str, int]:
        """The source partition of a partition-scoped key."""
        assert self.topic is not None and self.partition is not None
        return (self.topic, self.partition)


@dataclass(frozen=True, slots=True)
class WindowPolicy:
    size_ms: int
    grace_ms: int
    max_records_per_file: int
    late_records: Literal["deadLetter", "currentWindow"] = "deadLetter"
    # Limits beyond the record count (maxAmountPerFile, maxBytesPerFile; core/limits.py).
    limits: PartLimits | None = None
    idle_timeout_ms: int = 30_000
    flush_interval_ms: int | None = None
    # Windows aligned to a cut-off in a time zone; None: UTC windows aligned to the epoch.
    cycles: ClearingCycles | None = None
    # Plausible event times [min, max): outside, a record is dead-lettered (EVENT_TIME_OUT_OF_RANGE)
    # rather than open a window that never closes (a year-9999 or microsecond timestamp).
    min_event_ms: int = 946_684_800_000  # 2000-01-01T00:00:00Z
    max_event_ms: int = 4_102_444_800_000  # 2100-01-01T00:00:00Z

    # A record further ahead of its partition's watermark than this (a card number or epoch
    # microseconds read as millis) is dead-lettered too: one such record would move the
    # watermark past every open window and make each later record late.  Relative to the
    # watermark, a function of the partition's records in offset order, so replay decides the
    # same; the first record of a partition (no watermark yet) meets only the fixed bounds.
    max_future_ms: int | None = 86_400_000

    def out_of_range(self, event_time_ms: int, watermark_ms: int | None) -> str | None:
        """Why a record's event time is not plausible (EVENT_TIME_OUT_OF_RANGE), or None."""
        if not self.min_event_ms <= event_time_ms < self.max_event_ms:
            return "event time outside input.minEventTime .. maxEventTime"
        if self.max_future_ms is not None and watermark_ms is not None and event_time_ms > watermark_ms + self.max_future_ms:
            return "event time more than input.maxFutureMs ahead of the partition's watermark"
        return None

    @property
    def part_limits(self) -> PartLimits:
        return self.limits or PartLimits(self.max_records_per_file)

    def start_of(self, event_time_ms: int) -> int:
        if self.cycles is not None:
            return self.cycles.start_of(event_time_ms)
        return event_time_ms - (event_time_ms % self.size_ms)

    def end_of(self, start_ms: int) -> int:
        return self.cycles.end_of(start_ms) if self.cycles is not None else start_ms + self.size_ms


class WindowAssigner:
    """Maps a record to its file key (the Partitioner of Kafka Connect's vocabulary)."""

    def __init__(self, policy: WindowPolicy, group_by: Iterable[str | tuple[str, str]] = (),
                 per_partition: bool = True) -> None:
        """``group_by``: record field names, or (name, mapping expression) pairs."""
        self._policy = policy
        self._group_by = tuple(_group_member(g) for g in group_by)
        self._per_partition = per_partition
        self._keys: dict[tuple, FileKey] = {}  # interned keys: one FileKey per file, not per record

    def key_for(self, record: SourceRecord, event_time_ms: int | None = None) -> FileKey:
        start = self._policy.start_of(record.event_time_ms if event_time_ms is None else event_time_ms)
        group: list[tuple[str, str]] = []
        for name, evaluate in self._group_by:
            value = record.value.get(name) if evaluate is None else _evaluated(name, evaluate, record.value)
            if value is None or value == "":
                raise MissingGroupField(name)
            group.append((name, str(value)))
        topic, partition = (record.topic, record.partition) if self._per_partition else (None, None)
        ident = (topic, partition, start, *group)
        key = self._keys.get(ident)
        if key is None:
            if len(self._keys) >= 100_000:
                self._keys.clear()
            key = self._keys[ident] = FileKey(topic, partition, start, self._policy.end_of(start), tuple(group))
        return key


def _group_member(member: str | tuple[str, str]) -> tuple[str, Callable[[Any], Any] | None]:
    if isinstance(member, str):
        return member, None
    from stream_app.core.structured.expressions import compile_expression

    name, source = member
    return name, compile_expression(source)[0]


def _evaluated(name: str, evaluate: Callable[[Any], Any], value: dict) -> Any:
    from stream_app.core.structured.expressions import EvaluationError

    try:
        return evaluate(value)
    except (EvaluationError, KeyError, TypeError, ValueError, ArithmeticError):
        raise MissingGroupField(name) from None


def compress_offsets(offsets: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted offsets -> inclusive ``(first, last)`` runs."""
    ranges: list[tuple[int, int]] = []
    for off in offsets:
        if ranges and off == ranges[-1][1] + 1:
            ranges[-1] = (ranges[-1][0], off)
        else:
            ranges.append((off, off))
    return ranges


TP = tuple[str, int]
# Offset ranges of a part per source partition: {(topic, partition): [(first, last), ...]}.
SourceRanges = dict[TP, list[tuple[int, int]]]


@dataclass
class WindowFacts:
    """What is durably known about a file window: persisted in the state table.

    ``parts`` maps a finalized part to its offset ranges per source partition (one partition in
    partition scope, every contributing input partition in window scope).
    """

    next_part: int = 0
    closed: bool = False
    parts: dict[int, SourceRanges] = field(default_factory=dict)

    def holds_offset(self, offset: int, tp: TP | None = None) -> bool:
        return any(first <= offset <= last for sources in self.parts.values()
                   for source, ranges in sources.items() if tp is None or source == tp
                   for first, last in ranges)

    def to_json(self) -> dict:
        return {
            "next_part": self.next_part,
            "closed": self.closed,
            "parts": {str(p): [[t, n, [list(r) for r in ranges]] for (t, n), ranges in sources.items()]
                      for p, sources in self.parts.items()},
        }

    @classmethod
    def from_json(cls, data: dict) -> WindowFacts:
        return cls(
            next_part=int(data["next_part"]),
            closed=bool(data["closed"]),
            parts={int(p): {(str(t), int(n)): [(int(a), int(b)) for a, b in ranges] for t, n, ranges in sources}
                   for p, sources in data["parts"].items()},
        )


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """Everything below ``offset`` of a stage's input partition is done.

    Partition scope and routing: ``watermark_ms`` is the max event time below the offset and
    ``closed_before_ms`` the partition's close frontier (every window ending at or before it is
    closed, by the watermark or by an idle close).  File stage: ``frontiers`` holds each input
    partition's close frontier as of the offset.
    """

    offset: int
    watermark_ms: int | None
    closed_before_ms: int | None = None
    frontiers: tuple[tuple[str, int, int], ...] | None = None

    def to_json(self) -> dict:
        data: dict = {"offset": self.offset, "watermark_ms": self.watermark_ms}
        if self.closed_before_ms is not None:
            data["closed_before_ms"] = self.closed_before_ms
        if self.frontiers is not None:
            data["frontiers"] = [list(f) for f in self.frontiers]
        return data

    @classmethod
    def from_json(cls, data: dict) -> Checkpoint:
        closed = data.get("closed_before_ms")
        frontiers = data.get("frontiers")
        return cls(int(data["offset"]), None if data["watermark_ms"] is None else int(data["watermark_ms"]),
                   None if closed is None else int(closed),
                   None if frontiers is None else tuple((str(t), int(p), int(c)) for t, p, c in frontiers))


@dataclass(slots=True)
class FileCut:
    """A part of a file window that is complete and must now be assembled and written.

    ``records`` holds the part's records in offset order, or is empty in streaming mode, where
    they were handed to ``on_append`` as they arrived and only count and offsets are kept.
    """

    key: FileKey
    part: int
    records: list[SourceRecord]
    reason: CutReason
    closes_window: bool
    count: int = 0
    # The lowest offset of the stage's input partition the cut depends on (the commit gate):
    # a source offset in partition scope, a repartition offset in window scope.
    first_offset: int = 0
    # Partition scope: the ranges of the key's own partition; window scope: see ``sources``.
    ranges: list[tuple[int, int]] = field(default_factory=list)
    sources: SourceRanges | None = None
    # Window scope with streaming append: the spool segments (core.routing.Segment s) whose
    # merged file order holds the part's records at positions ``merged`` = [first, end);
    # ``sources`` is then filled in when the part is written.
    segments: tuple = ()
    merged: tuple[int, int] | None = None

    @classmethod
    def of(cls, key: FileKey, part: int, records: list[SourceRecord], reason: CutReason = "count",
           closes_window: bool = False, first_offset: int | None = None) -> FileCut:
        """A cut holding ``records`` (non-empty, in file order)."""
        if key.per_partition:
            ranges = compress_offsets(r.offset for r in records)
            return cls(key, part, records, reason, closes_window, len(records), ranges[0][0], ranges)
        return cls(key, part, records, reason, closes_window, len(records), first_offset or 0, [],
                   source_ranges(records))

    def source_ranges(self) -> SourceRanges:
        """Offset ranges per source partition, in (topic, partition) order."""
        if self.sources is not None:
            return self.sources
        assert self.key.per_partition, "a streamed business-file part knows its ranges once written"
        return {self.key.tp: self.ranges}


def source_ranges(records: Iterable[SourceRecord]) -> SourceRanges:
    """Offset ranges per source partition of records that are in offset order per partition."""
    by_source: dict[TP, list[int]] = {}
    for r in records:
        by_source.setdefault((r.topic, r.partition), []).append(r.offset)
    return {tp: compress_offsets(sorted(offsets)) for tp, offsets in sorted(by_source.items())}


@dataclass(frozen=True, slots=True)
class WindowOpened:
    key: FileKey


@dataclass(frozen=True, slots=True)
class WindowClosed:
    key: FileKey
    parts: int
    reason: CutReason
    # True when the close is not implied by the watermark and must be persisted.
    persist: bool
    # The window's facts with the close, to persist (None: nothing yet, a part of the window
    # still waits to be finalized and carries the close; or a close the watermark implies).
    facts: WindowFacts | None = None


@dataclass(frozen=True, slots=True)
class LateRecord:
    record: SourceRecord
    key: FileKey


Output = FileCut | WindowOpened | WindowClosed | LateRecord


@dataclass(slots=True)
class _OpenWindow:
    key: FileKey
    part: int
    records: list[SourceRecord] = field(default_factory=list)
    count: int = 0
    ranges: list[tuple[int, int]] = field(default_factory=list)
    first_buffered_wall_ms: int | None = None
    spill: RecordSpill | None = None  # the part's first records, moved to disk under backpressure
    fill: PartFill | None = None  # against the part limits (core/limits.py)

    @property
    def in_memory(self) -> int:
        return len(self.records)

    def take_in_memory(self) -> list[SourceRecord]:
        records, self.records = self.records, []
        return records

    def add_offset(self, offset: int) -> None:
        self.count += 1
        if self.ranges and self.ranges[-1][1] + 1 == offset:
            self.ranges[-1] = (self.ranges[-1][0], offset)
        else:
            self.ranges.append((offset, offset))


FactsLookup = Callable[[FileKey], "WindowFacts | None"]
# Backpressure: where the records of an open part (or window) of this key are moved to disk.
SpillFactory = Callable[[FileKey], RecordSpill]


class Spillable(Protocol):
    """An open part (partition scope) or window (window scope) as backpressure sees it."""

    key: FileKey
    spill: RecordSpill | None

    @property
    def in_memory(self) -> int: ...

    def take_in_memory(self) -> list[SourceRecord]: ...
# Streaming mode: receives each record as it joins a part, instead of the windower keeping it.
AppendHook = Callable[[FileKey, int, SourceRecord], None]


class OffsetCursor:
    """Where a state machine stands in its input partition.  Offsets below the checkpoint it was
    restored from, and up to the last one it processed, are skipped when they are read again."""

    def __init__(self, checkpoint: Checkpoint | None) -> None:
        self._next_offset: int | None = checkpoint.offset if checkpoint else None
        self._floor = checkpoint.offset if checkpoint else 0

    @property
    def next_offset(self) -> int | None:
        """The offset after the last one processed (None before the first record)."""
        return self._next_offset

    @property
    def position(self) -> int:
        """The next offset to read: also known for a partition that had no record yet."""
        return self._next_offset if self._next_offset is not None else self._floor

    def already_processed(self, offset: int) -> bool:
        return offset < self._floor or (self._next_offset is not None and offset < self._next_offset)

    def skip(self, offset: int) -> None:
        """Account for an offset consumed without a record for this stage (e.g. dead-lettered)."""
        if not self.already_processed(offset):
            self._next_offset = offset + 1


class PartLedger:
    """What both file-cutting state machines keep about their cut parts until they are durable:
    the pending cuts (finalized in (window, part) order), the window facts and the windows whose
    close waits for their last part.  ``PartitionWindower`` and the business-file
    ``WindowCollector`` share it."""

    def __init__(self, facts_lookup: FactsLookup | None) -> None:
        self._lookup = facts_lookup or (lambda key: None)
        self._pending: dict[tuple[FileKey, int], FileCut] = {}
        self._facts: dict[FileKey, WindowFacts | None] = {}
        # Windows closed while some of their parts still wait to be finalized: the close becomes
        # a persisted fact only with the last of them (see _finalize).
        self._closing: set[FileKey] = set()
        self._buffered = 0

    @property
    def buffered_records(self) -> int:
        """Records held in memory: open parts plus cut parts not yet finalized (0 when streaming)."""
        return self._buffered

    # -- backpressure -------------------------------------------------------------------------
    def _spillable(self) -> Iterable[Spillable]:
        """The open parts (windows) whose records can move to disk."""
        raise NotImplementedError

    def spill_largest(self, spill_for: SpillFactory) -> int:
        """Backpressure relief that changes no file: the records the largest open part (window)
        holds in memory go to disk until it is cut.  How many were moved (0: none in memory)."""
        window = max((w for w in self._spillable() if w.in_memory), key=lambda w: (w.in_memory, w.key), default=None)
        if window is None:
            return 0
        if window.spill is None:
            window.spill = spill_for(window.key)
        records = window.take_in_memory()
        window.spill.extend(records)
        self._buffered -= len(records)
        return len(records)

    def _read_back(self, window: Spillable) -> list[SourceRecord]:
        """The records a cut part (window) had moved to disk, back in memory."""
        if window.spill is None:
            return []
        records = window.spill.load()
        self._buffered += len(records)
        window.spill.discard()
        window.spill = None
        return records

    def discard_spills(self) -> None:
        """The partition moves (or the worker stops): its spilled records are read again from Kafka."""
        for window in self._spillable():
            if window.spill is not None:
                window.spill.discard()
                window.spill = None

    def facts_for(self, key: FileKey) -> WindowFacts | None:
        # Cached, absent facts included: this owner is the only writer of its keys' facts, and
        # the lookup (a table read) would otherwise run for every record of a new window.
        try:
            return self._facts[key]
        except KeyError:
            facts = self._facts[key] = self._lookup(key)
            if facts is not None:
                self._facts_loaded(facts)
            return facts

    def _facts_loaded(self, facts: WindowFacts) -> None:
        """Hook: facts of a window were read from the store."""

    def pending_cuts(self) -> list[FileCut]:
        return sorted(self._pending.values(), key=lambda c: (c.key, c.part))

    def is_pending(self, cut: FileCut) -> bool:
        return self._pending.get((cut.key, cut.part)) is cut

    def waits_for_earlier_part(self, cut: FileCut) -> bool:
        """An earlier part of the cut's window is not finalized yet.

        Parts are finalized in order: persisted facts then never hold part n+1 without part n,
        so a restart re-reads part n's records into part n (its next_part is still n), not into
        a new part with a different name.
        """
        return any(key == cut.key and part < cut.part for key, part in self._pending)

    def _has_pending(self, key: FileKey) -> bool:
        return any(k == key for k, _ in self._pending)

    def _finalize(self, cut: FileCut, ranges: SourceRanges) -> WindowFacts:
        """The cut's file is durable: drop its records and return the facts to persist."""
        del self._pending[(cut.key, cut.part)]
        self._buffered -= len(cut.records)  # 0 in streaming mode
        facts = self.facts_for(cut.key) or WindowFacts()
        facts.parts[cut.part] = ranges
        facts.next_part = max(facts.next_part, cut.part + 1)
        if cut.closes_window:
            self._closing.add(cut.key)
        if cut.key in self._closing and not self._has_pending(cut.key):
            facts.closed = True
            self._closing.discard(cut.key)
        self._facts[cut.key] = facts
        return facts


class PartitionWindower(PartLedger, OffsetCursor):
    """Deterministic file cutting for one source partition.  Not thread-safe; one owner."""

    def __init__(
        self,
        topic: str,
        partition: int,
        policy: WindowPolicy,
        assigner: WindowAssigner,
        checkpoint: Checkpoint | None = None,
        facts_lookup: FactsLookup | None = None,
        on_append: AppendHook | None = None,
    ) -> None:
        PartLedger.__init__(self, facts_lookup)
        OffsetCursor.__init__(self, checkpoint)
        self.topic = topic
        self.partition = partition
        self._policy = policy
        self._assigner = assigner
        self._watermark: int | None = checkpoint.watermark_ms if checkpoint else None
        self._base_watermark = self._watermark
        self._marks: deque[tuple[int, int]] = deque()  # (offset, watermark after it), increasing
        self._open: dict[FileKey, _OpenWindow] = {}
        self._close_heap: list[tuple[int, FileKey]] = []
        # The highest offset any known finalized part holds: records above it (all of them, in
        # a run without restarts) skip the search through the parts' offset ranges.
        self._finalized_high = -1
        self._on_append = on_append
        self.last_record_wall_ms: int | None = None

    # -- inspection -------------------------------------------------------------------------
    @property
    def watermark_ms(self) -> int | None:
        return self._watermark

    @property
    def open_windows(self) -> list[FileKey]:
        return list(self._open)

    def open_since(self) -> list[int]:
        """Wall-clock time each open part received its first record."""
        return [w.first_buffered_wall_ms for w in self._open.values() if w.first_buffered_wall_ms is not None]

    def _facts_loaded(self, facts: WindowFacts) -> None:
        self._finalized_high = max([self._finalized_high] + [last for sources in facts.parts.values()
                                                             for ranges in sources.values() for _, last in ranges])

    # -- input ------------------------------------------------------------------------------
    def process(self, record: SourceRecord, now_wall_ms: int, redriven: bool = False) -> list[Output]:
        """``redriven``: a late record goes into the current window (see records.REDRIVE_HEADER)."""
        if self.already_processed(record.offset):
            return []
        self._next_offset = record.offset + 1
        self.last_record_wall_ms = now_wall_ms
        out: list[Output] = []
        key = self._assigner.key_for(record)
        facts = self.facts_for(key)
        if facts is not None and record.offset <= self._finalized_high and facts.holds_offset(record.offset):
            pass  # already in a finalized part (re-read after a restart)
        else:
            target: FileKey | None = self._late_target(record, redriven) if self._is_closed(key, facts) else key
            if target is None:
                out.append(LateRecord(record, key))
            else:
                self._append(target, record, now_wall_ms, out)
        self._advance_watermark(record.offset, record.event_time_ms, out)
        return out

    def _is_closed(self, key: FileKey, facts: WindowFacts | None) -> bool:
        if facts is not None and facts.closed:
            return True
        return self._watermark is not None and key.window_end_ms + self._policy.grace_ms <= self._watermark

    def _late_target(self, record: SourceRecord, redriven: bool = False) -> FileKey | None:
        if (self._policy.late_records != "currentWindow" and not redriven) or self._watermark is None:
            return None
        key = self._assigner.key_for(record, event_time_ms=self._watermark)
        # A re-driven record must land somewhere: the first window from the watermark's on that
        # is still open (after an idle close, the one after the watermark's), decided by offsets.
        for _ in range(4 if redriven else 1):
            if not self._is_closed(key, self.facts_for(key)):
                return key
            key = self._assigner.key_for(record, event_time_ms=key.window_end_ms)
        return None

    def _append(self, key: FileKey, record: SourceRecord, now_wall_ms: int, out: list[Output]) -> None:
        window = self._open.get(key)
        if window is None:
            facts = self.facts_for(key)
            part = facts.next_part if facts else 0
            window = _OpenWindow(key, part, fill=PartFill(self._policy.part_limits, key, part))
            self._open[key] = window
            heapq.heappush(self._close_heap, (key.window_end_ms, key))
            if facts is None:
                out.append(WindowOpened(key))
        assert window.fill is not None
        limit = window.fill.refuses(record)
        if limit is not None:  # the record would take the part over a limit: it starts the next
            out.append(self._cut(window, limit, closes_window=False))
        if not window.count:
            window.first_buffered_wall_ms = now_wall_ms
        window.add_offset(record.offset)
        if self._on_append is None:
            window.records.append(record)
            self._buffered += 1
        else:
            self._on_append(key, window.part, record)
        if window.fill.add(record):
            out.append(self._cut(window, "count", closes_window=False))

    def _advance_watermark(self, offset: int, event_time_ms: int, out: list[Output]) -> None:
        if self._watermark is not None and event_time_ms <= self._watermark:
            return
        self._watermark = event_time_ms
        self._marks.append((offset, event_time_ms))
        grace = self._policy.grace_ms
        while self._close_heap and self._close_heap[0][0] + grace <= event_time_ms:
            _, key = heapq.heappop(self._close_heap)
            window = self._open.pop(key, None)
            if window is not None:
                self._close(window, "watermark", persist=False, out=out)

    # -- cuts -------------------------------------------------------------------------------
    def _cut(self, window: _OpenWindow, reason: CutReason, closes_window: bool) -> FileCut:
        records = self._read_back(window) + window.records  # spilled first, as they came
        cut = FileCut(window.key, window.part, records, reason, closes_window,
                      window.count, window.ranges[0][0], window.ranges)
        self._pending[(cut.key, cut.part)] = cut
        window.part += 1
        window.records = []
        window.count = 0
        window.ranges = []
        window.first_buffered_wall_ms = None
        if window.fill is not None:
            window.fill.reset(window.part)
        return cut

    def _close(self, window: _OpenWindow, reason: CutReason, persist: bool, out: list[Output]) -> None:
        if window.count:
            out.append(self._cut(window, reason, closes_window=True))
        out.append(WindowClosed(window.key, window.part, reason, persist,
                                self.mark_closed(window.key) if persist else None))

    def cut_idle(self, now_wall_ms: int) -> list[Output]:
        """Close windows of an idle partition whose end (+grace) has passed on the wall clock."""
        if self.last_record_wall_ms is None or now_wall_ms - self.last_record_wall_ms < self._policy.idle_timeout_ms:
            return []
        out: list[Output] = []
        for key in sorted(k for k in self._open if k.window_end_ms + self._policy.grace_ms <= now_wall_ms):
            self._close(self._open.pop(key), "idle", persist=True, out=out)
        return out

    def cut_interval(self, now_wall_ms: int) -> list[Output]:
        interval = self._policy.flush_interval_ms
        if interval is None:
            return []
        return [
            self._cut(w, "interval", closes_window=False)
            for w in sorted(self._open.values(), key=lambda w: w.key)
            if w.count and w.first_buffered_wall_ms is not None and now_wall_ms - w.first_buffered_wall_ms >= interval
        ]

    def cut_largest(self) -> list[Output]:
        """Backpressure relief by an early cut of the largest open part (reason 'pressure'): the
        file then depends on when the buffer filled up (worker.pressureCut, an opt-in)."""
        candidates = [w for w in self._open.values() if w.records]  # only in-memory parts relieve memory
        if not candidates:
            return []
        window = max(candidates, key=lambda w: (len(w.records), w.key))
        return [self._cut(window, "pressure", closes_window=False)]

    def _spillable(self) -> Iterable[Spillable]:
        return self._open.values()

    # -- finalization and commit ------------------------------------------------------------
    def mark_finalized(self, cut: FileCut) -> WindowFacts:
        """The cut's file is durable: drop its records and return the facts to persist."""
        if cut.ranges:
            self._finalized_high = max(self._finalized_high, max(last for _, last in cut.ranges))
        return self._finalize(cut, {cut.key.tp: cut.ranges})

    def mark_closed(self, key: FileKey) -> WindowFacts | None:
        """Persist an idle close so that records arriving later count as late after a restart.

        None while parts of the window still wait to be finalized: a closed window would turn
        their records into late records when a restart reads them again.  The last of those
        parts carries the close instead.
        """
        if self._has_pending(key):
            self._closing.add(key)
            return None
        facts = self.facts_for(key) or WindowFacts()
        facts.closed = True
        self._facts[key] = facts
        return facts

    def commit_offset(self) -> int | None:
        """Lowest offset not yet in a finalized file (what the consumer may commit)."""
        lows = [w.ranges[0][0] for w in self._open.values() if w.count]
        lows.extend(c.first_offset for c in self._pending.values())
        if lows:
            return min(lows)
        return self._next_offset

    def checkpoint(self) -> Checkpoint | None:
        offset = self.commit_offset()
        if offset is None:
            return None
        while self._marks and self._marks[0][0] < offset:
            self._base_watermark = self._marks.popleft()[1]
        self._forget_settled_facts()
        return Checkpoint(offset, self._base_watermark)

    def _forget_settled_facts(self) -> None:
        # Facts of windows closed by the checkpoint watermark are no longer needed in memory:
        # the watermark alone marks their records late, and the table still holds them.
        if self._base_watermark is None:
            return
        horizon = self._base_watermark - self._policy.grace_ms
        pending_keys = {k for k, _ in self._pending}
        for key in [k for k in self._facts if k.window_end_ms <= horizon]:
            if key not in self._open and key not in pending_keys:
                del self._facts[key]
