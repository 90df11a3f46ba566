"""Business files (``fileScope: window``): one file per file window across every input partition.

Two stages, both pure state machines here (the live worker and replay drive them):

* **routing**, one ``PartitionRouter`` per input partition: decides, in that partition's offset
  order, which file window a record belongs to and whether it is late, exactly as partition
  scope does (watermark of the partition, ``graceMs``, idle close).  It keeps no records: each
  accepted record is sent on, keyed by its file key, and the partition's **close frontier**
  (every window ending at or before it is closed for this partition) is announced after the
  records that led to it.
* **files**, one ``WindowCollector`` per repartition partition: gathers the records of each file
  key, drops records routed twice (by source coordinates), and cuts a window's files once every
  input partition's frontier has passed the window's end.

Which records a file holds is therefore decided per input partition, in its own order, and the
collector only waits and orders: records go into a file by (topic, partition, offset), an order
that does not depend on how the partitions interleave, and count cuts follow it.

(Longer than 400 lines on purpose: the router's close frontier and the collector's use of it are
one protocol, and the proof that a window is complete when every frontier passed it reads best
with both halves in one place.)
"""

from __future__ import annotations

import zlib
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from stream_app.core.limits import LimitReason, split
from stream_app.core.records import SourceRecord
from stream_app.core.spool import RecordSpill
from stream_app.core.windows import (
    TP,
    Checkpoint,
    CutReason,
    FactsLookup,
    FileCut,
    FileKey,
    OffsetCursor,
    Output,
    PartLedger,
    SourceRanges,
    Spillable,
    WindowAssigner,
    WindowClosed,
    WindowFacts,
    WindowOpened,
    WindowPolicy,
    source_ranges,
)


def file_order(record: SourceRecord) -> tuple[int, str, int, int]:
    """Where a record goes in a business file: by event time, then source coordinates.  It does
    not depend on arrival order, worker count or, for distinct event times, the partitioning."""
    return (record.event_time_ms, record.topic, record.partition, record.offset)


def repartition_partition(key: FileKey, partitions: int) -> int:
    """The repartition partition that owns a file key (stable across processes and versions)."""
    return zlib.crc32(key.id.encode()) % partitions


# -- routing ---------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Late:
    record: SourceRecord
    key: FileKey  # the closed window it belonged to


class PartitionRouter(OffsetCursor):
    """The routing decision for one input partition.  Not thread-safe; one owner.

    State that must survive a restart is the checkpoint: next offset, watermark and close
    frontier.  A router restored from it makes the same decisions for the records after it.
    """

    def __init__(self, topic: str, partition: int, policy: WindowPolicy, assigner: WindowAssigner,
                 checkpoint: Checkpoint | None = None) -> None:
        self.topic = topic
        self.partition = partition
        self._policy = policy
        self._assigner = assigner
        OffsetCursor.__init__(self, checkpoint)
        self._watermark: int | None = checkpoint.watermark_ms if checkpoint else None
        self._idle_closed_before: int | None = checkpoint.closed_before_ms if checkpoint else None
        self.last_record_wall_ms: int | None = None

    @property
    def watermark_ms(self) -> int | None:
        return self._watermark

    @property
    def closed_before_ms(self) -> int | None:
        """Every window whose end is at or before this is closed for this partition."""
        # per record (via _is_closed): plain comparisons, no list
        idle = self._idle_closed_before
        if self._watermark is None:
            return idle
        by_watermark = self._watermark - self._policy.grace_ms
        return by_watermark if idle is None or by_watermark > idle else idle

    def frontier(self) -> int:
        """The close frontier as a window boundary (what markers carry); -1 before any close."""
        closed = self.closed_before_ms
        return -1 if closed is None else self._policy.start_of(closed)

    def _is_closed(self, key: FileKey) -> bool:
        closed = self.closed_before_ms
        return closed is not None and key.window_end_ms <= closed

    def route(self, record: SourceRecord, now_wall_ms: int, redriven: bool = False) -> FileKey | Late | None:
        """The file key the record goes to, or ``Late``; None: already processed (re-read below
        the checkpoint).  ``redriven``: a late record goes into the current window (see
        records.REDRIVE_HEADER)."""
        if self.already_processed(record.offset):
            return None
        self._next_offset = record.offset + 1
        self.last_record_wall_ms = now_wall_ms
        key = self._assigner.key_for(record)
        outcome: FileKey | Late
        if not self._is_closed(key):
            outcome = key
        else:
            target = None
            if (self._policy.late_records == "currentWindow" or redriven) and self._watermark is not None:
                target = self._assigner.key_for(record, event_time_ms=self._watermark)
                # re-driven: the first window from the watermark's on that is open (as in windows.py)
                for _ in range(3 if redriven else 0):
                    if not self._is_closed(target):
                        break
                    target = self._assigner.key_for(record, event_time_ms=target.window_end_ms)
                if self._is_closed(target):
                    target = None
            outcome = target if target is not None else Late(record, key)
        if self._watermark is None or record.event_time_ms > self._watermark:
            self._watermark = record.event_time_ms
        return outcome

    def close_idle(self, now_wall_ms: int) -> bool:
        """An idle, caught-up partition closes the windows that ended on the wall clock.

        True when the frontier moved: it must then be persisted before it is announced, so that
        after a restart the records that arrive later are late here too.
        """
        last = self.last_record_wall_ms
        if last is not None and now_wall_ms - last < self._policy.idle_timeout_ms:
            return False
        before = self.frontier()
        closed = now_wall_ms - self._policy.grace_ms
        if self._idle_closed_before is None or closed > self._idle_closed_before:
            self._idle_closed_before = closed
        return self.frontier() > before

    def idle_since(self, now_wall_ms: int) -> None:
        """Start the idle clock of a partition that has not had a record yet (just assigned)."""
        if self.last_record_wall_ms is None:
            self.last_record_wall_ms = now_wall_ms

    def checkpoint(self) -> Checkpoint | None:
        if self._next_offset is None:
            if self._idle_closed_before is None:
                return None
            return Checkpoint(self._floor, self._watermark, self._idle_closed_before)
        return Checkpoint(self._next_offset, self._watermark, self._idle_closed_before)


# -- files -----------------------------------------------------------------------------------

# Streaming append: a routed entry (source offset, event time ms, value bytes) goes to the
# spool of its (file key, source partition) instead of memory.
RoutedEntry = tuple[int, int, "bytes | None"]
SpoolHook = Callable[[FileKey, TP, RoutedEntry], None]
# Streaming, limits beyond the count: parts (first, end, reason) of the segments' merged order.
StreamPlanner = Callable[[FileKey, "tuple[Segment, ...]", int], "list[tuple[int, int, LimitReason]]"]


@dataclass(frozen=True, slots=True)
class Segment:
    """Entries ``[first, end)`` (by position in the source's spool) of one source partition."""

    source: TP
    first: int
    end: int


@dataclass(slots=True)
class _SpooledSource:
    """Streaming: what a window keeps per source partition instead of its records."""

    spooled: int = 0  # entries in the spool (across parts); the next entry's position
    cut: int = 0  # entries already in cut parts


@dataclass(slots=True)
class _CollectingWindow:
    key: FileKey
    part: int
    by_source: dict[TP, list[SourceRecord]] = field(default_factory=dict)
    spooled: dict[TP, _SpooledSource] = field(default_factory=dict)
    last_offset: dict[TP, int] = field(default_factory=dict)
    count: int = 0
    first_position: int | None = None  # repartition offset of the oldest record held
    first_buffered_wall_ms: int | None = None
    spill: RecordSpill | None = None  # records moved to disk under backpressure (any source)

    @property
    def in_memory(self) -> int:
        return sum(len(records) for records in self.by_source.values())

    def take_in_memory(self) -> list[SourceRecord]:
        records = [r for source_records in self.by_source.values() for r in source_records]
        self.by_source = {}
        return records


class WindowCollector(PartLedger, OffsetCursor):
    """The file stage for one repartition partition.  Not thread-safe; one owner.

    Offers the interface ``FilePipeline`` finalizes and commits through (the same as
    ``PartitionWindower``'s): pending cuts, facts, and a checkpoint of the repartition partition.
    The checkpoint carries every input partition's frontier as of its offset, so a restart that
    reads on from it knows exactly what the markers below it said.
    """

    def __init__(self, topic: str, partition: int, policy: WindowPolicy, sources: Iterable[TP],
                 checkpoint: Checkpoint | None = None, facts_lookup: FactsLookup | None = None,
                 on_spool: SpoolHook | None = None, plan_streamed: StreamPlanner | None = None) -> None:
        PartLedger.__init__(self, facts_lookup)
        OffsetCursor.__init__(self, checkpoint)
        self.topic = topic
        self.partition = partition
        self._policy = policy
        self._sources = frozenset(sources)
        base = {(t, p): c for t, p, c in (checkpoint.frontiers or ())} if checkpoint else {}
        self._base_frontiers: dict[TP, int] = dict(base)
        self._frontiers: dict[TP, int] = dict(base)
        self._marks: deque[tuple[int, TP, int]] = deque()  # (repartition offset, source, frontier)
        self._open: dict[FileKey, _CollectingWindow] = {}
        self._on_spool = on_spool
        self._plan_streamed = plan_streamed if policy.part_limits.beyond_count else None
        self.duplicates = 0
        self.last_record_wall_ms: int | None = None

    # -- inspection (as PartitionWindower) ----------------------------------------------------
    @property
    def open_windows(self) -> list[FileKey]:
        return list(self._open)

    def open_since(self) -> list[int]:
        return [w.first_buffered_wall_ms for w in self._open.values() if w.first_buffered_wall_ms is not None]

    def frontier_of(self, source: TP) -> int | None:
        return self._frontiers.get(source)

    # -- input --------------------------------------------------------------------------------
    def add_records(self, position: int, key: FileKey, source: TP, records: Sequence[Any],
                    now_wall_ms: int) -> list[Output]:
        """Records of one source partition for one file key, in source offset order, read at
        repartition offset ``position``: decoded ``SourceRecord`` s, or (streaming append) the
        routed entries, which go to the spool hook."""
        if self.already_processed(position):
            return []
        self._next_offset = position + 1
        self.last_record_wall_ms = now_wall_ms
        out: list[Output] = []
        # A window every source's frontier has passed can receive no new record: a router only
        # routes a window's records before its own close mark, and sends late ones elsewhere.
        # So these are copies from a restarted router — also while the closed window still
        # waits to be written, when neither the open window nor durable facts would say so.
        through = self.closed_through()
        facts = self.facts_for(key)
        if (through is not None and key.window_end_ms <= through) or (facts is not None and facts.closed):
            self.duplicates += len(records)
            return out
        window = self._open.get(key)
        spool = self._on_spool
        for record in records:
            offset = record[0] if spool is not None else record.offset
            if window is not None and offset <= window.last_offset.get(source, -1):
                self.duplicates += 1
                continue
            if facts is not None and facts.holds_offset(offset, source):
                self.duplicates += 1  # in an early-cut part that is already written
                continue
            if window is None:
                window = self._open[key] = _CollectingWindow(key, facts.next_part if facts else 0)
                if facts is None:
                    out.append(WindowOpened(key))
            if window.first_position is None:
                window.first_position = position
                window.first_buffered_wall_ms = now_wall_ms
            if spool is not None:
                spool(key, source, record)
                spooled = window.spooled.get(source)
                if spooled is None:
                    spooled = window.spooled[source] = _SpooledSource()
                spooled.spooled += 1
            else:
                window.by_source.setdefault(source, []).append(record)
                self._buffered += 1
            window.last_offset[source] = offset
            window.count += 1
        return out

    def add_frontier(self, position: int, source: TP, frontier: int) -> list[Output]:
        """An input partition's close frontier, read at repartition offset ``position``."""
        if self.already_processed(position):
            return []
        self._next_offset = position + 1
        if frontier <= self._frontiers.get(source, -1):
            return []
        self._frontiers[source] = frontier
        self._marks.append((position, source, frontier))
        return self._close_complete()

    def closed_through(self) -> int | None:
        """Windows ending at or before this are closed for every input partition."""
        if not self._sources or any(s not in self._frontiers for s in self._sources):
            return None
        return min(self._frontiers[s] for s in self._sources)

    def _close_complete(self) -> list[Output]:
        through = self.closed_through()
        out: list[Output] = []
        if through is None:
            return out
        for key in sorted(k for k in self._open if k.window_end_ms <= through):
            window = self._open.pop(key)
            self._cut(window, "watermark", closes_window=True, out=out)
            out.append(WindowClosed(key, window.part, "watermark", persist=False))
        return out

    # -- cuts ---------------------------------------------------------------------------------
    def _cut(self, window: _CollectingWindow, reason: CutReason, closes_window: bool, out: list[Output]) -> None:
        """Everything the window holds becomes parts: records in file order (event time, then
        topic, partition, offset), ``maxRecordsPerFile`` to a part."""
        if not window.count:
            return
        size = self._policy.max_records_per_file
        assert window.first_position is not None
        parts: list[tuple[list[SourceRecord], SourceRanges | None, int, tuple[int, int] | None]] = []
        reasons: list[LimitReason] = []
        segments: tuple[Segment, ...] = ()
        if window.spooled:
            # Streaming: the parts are slices of the merged order of these spool segments,
            # merged (and their offset ranges found) when the first of them is written.
            segments = tuple(Segment(source, spooled.cut, spooled.spooled)
                             for source, spooled in sorted(window.spooled.items()) if spooled.cut < spooled.spooled)
            total = sum(seg.end - seg.first for seg in segments)
            for spooled in window.spooled.values():
                spooled.cut = spooled.spooled
            if self._plan_streamed is not None:  # limits beyond the count: they need the records
                planned = self._plan_streamed(window.key, segments, window.part)
                parts, reasons = [([], None, end - first, (first, end)) for first, end, _ in planned], \
                    [limit for _, _, limit in planned]
            else:
                parts = [([], None, min(size, total - start), (start, min(total, start + size)))
                         for start in range(0, total, size)]
        else:
            # read back what waited on disk: the file order does not depend on where records waited
            held = self._read_back(window) + [r for records in window.by_source.values() for r in records]
            ordered = sorted(held, key=file_order)
            chunks = split(ordered, self._policy.part_limits, window.key, window.part)
            reasons = [limit for _, limit in chunks]
            parts = [(chunk, source_ranges(chunk), len(chunk), None) for chunk, _ in chunks]
        for i, (chunk, ranges, count, merged) in enumerate(parts):
            last = i == len(parts) - 1
            cut_reason: CutReason = reason if last else (reasons[i] if reasons else "count")
            cut = FileCut(window.key, window.part, chunk, cut_reason, closes_window and last,
                          count, window.first_position, [], ranges, segments, merged)
            self._pending[(cut.key, cut.part)] = cut
            out.append(cut)
            window.part += 1
        window.by_source = {}
        window.count = 0
        window.first_position = None
        window.first_buffered_wall_ms = None

    def cut_idle(self, now_wall_ms: int) -> list[Output]:
        return []  # idleness is decided per input partition, by the routing stage

    def cut_interval(self, now_wall_ms: int) -> list[Output]:
        interval = self._policy.flush_interval_ms
        if interval is None:
            return []
        out: list[Output] = []
        for window in sorted(self._open.values(), key=lambda w: w.key):
            since = window.first_buffered_wall_ms
            if window.count and since is not None and now_wall_ms - since >= interval:
                self._cut(window, "interval", closes_window=False, out=out)
        return out

    def cut_largest(self) -> list[Output]:
        """An early cut for backpressure (reason 'pressure'; worker.pressureCut, an opt-in)."""
        candidates = [w for w in self._open.values() if w.by_source]  # only memory parts relieve memory
        if not candidates:
            return []
        out: list[Output] = []
        self._cut(max(candidates, key=lambda w: (w.count, w.key)), "pressure", closes_window=False, out=out)
        return out

    def _spillable(self) -> Iterable[Spillable]:
        return self._open.values()

    # -- finalization and commit (as PartitionWindower) ---------------------------------------
    def mark_finalized(self, cut: FileCut) -> WindowFacts:
        return self._finalize(cut, cut.source_ranges())

    def mark_closed(self, key: FileKey) -> WindowFacts | None:
        return None  # closes follow the frontiers, which the checkpoint carries

    def commit_offset(self) -> int | None:
        lows = [w.first_position for w in self._open.values() if w.first_position is not None]
        lows.extend(c.first_offset for c in self._pending.values())
        if lows:
            return min(lows)
        return self._next_offset

    def checkpoint(self) -> Checkpoint | None:
        offset = self.commit_offset()
        if offset is None:
            return None
        while self._marks and self._marks[0][0] < offset:
            _, source, frontier = self._marks.popleft()
            self._base_frontiers[source] = frontier
        self._forget_settled_facts()
        frontiers = tuple(sorted((t, p, c) for (t, p), c in self._base_frontiers.items()))
        return Checkpoint(offset, None, None, frontiers)

    def _forget_settled_facts(self) -> None:
        # A closed window's facts stay needed only while records for it may still be re-read.
        through = self.closed_through()
        if through is None:
            return
        pending_keys = {k for k, _ in self._pending}
        for key in [k for k, f in self._facts.items() if f is not None and f.closed]:
            if key.window_end_ms <= through and key not in self._open and key not in pending_keys:
                del self._facts[key]
