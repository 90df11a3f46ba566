"""Streaming mode (``worker.spoolDir``): parts are written to spool files as records arrive, so
memory stays flat however large a file grows.

Partition scope appends each record to its part's writer (``append``).  Window scope keeps each
routed entry in a (window, source partition) run spool (``spool_routed``) and renders a part
when its window is written: the runs merged in file order (``streamed_part``).  Whatever a run
left on disk for a partition is rebuilt from the offsets when it is assigned again.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from stream_app.core.assembly import Assembler, PartWriter
from stream_app.core.limits import LimitReason, PartFill, PartLimits
from stream_app.core.records import RawRecord, SourceRecord
from stream_app.core.routing import Segment
from stream_app.core.spool import FileSpool, MergedSpool, RunSpool
from stream_app.core.windows import TP, FileCut, FileKey
from stream_app.ops.faults import failpoint

DECODE_CHUNK = 2000  # records of a merged spool decoded at a time


def _marked_runs(marks: bytearray, base: int) -> list[tuple[int, int]]:
    """Inclusive runs of the marked positions (byte 1) of ``marks``, shifted by ``base``."""
    runs, pos = [], marks.find(1)
    while pos >= 0:
        end = marks.find(0, pos)
        end = len(marks) if end < 0 else end
        runs.append((base + pos, base + end - 1))
        pos = marks.find(1, end)
    return runs


class PartSpools:
    def __init__(self, spool_dir: Path, assembler: Assembler,
                 owner_of: Callable[[FileKey], TP]) -> None:
        self._dir = spool_dir
        self._assembler = assembler
        self._owner_of = owner_of
        self.parts: dict[tuple[FileKey, int], PartWriter] = {}  # partition scope: open parts
        self._runs: dict[tuple[FileKey, TP], RunSpool] = {}  # window scope: entries per (window, source)
        self._merged: dict[tuple[FileKey, tuple], MergedSpool] = {}  # ... in file order, per cut batch

    def reset(self, tp: TP) -> None:
        """A partition assigned (again): what an earlier run spooled is rebuilt from the offsets."""
        shutil.rmtree(self.partition_dir(tp), ignore_errors=True)

    def has_runs(self, cut: FileCut) -> bool:
        """The window's run spools of every source of the cut are here (not revoked meanwhile)."""
        return all((cut.key, seg.source) in self._runs for seg in cut.segments)

    @property
    def holds_runs(self) -> bool:
        return bool(self._runs)

    def revoke(self, tp: TP) -> None:
        for key_part in [kp for kp in self.parts if self._owner_of(kp[0]) == tp]:
            self.parts.pop(key_part).discard()
        for key in {ks[0] for ks in self._runs if self._owner_of(ks[0]) == tp}:
            self.drop_window(key)

    def partition_dir(self, tp: TP) -> Path:
        return self._dir / tp[0] / str(tp[1])

    def _window_dir(self, key: FileKey) -> Path:
        digest = hashlib.sha1(key.id.encode()).hexdigest()[:20]
        return self.partition_dir(self._owner_of(key)) / digest

    def spool_routed(self, key: FileKey, source: TP, entry: tuple[int, int, bytes | None]) -> None:
        """Window scope, streaming: a routed entry waits in its (window, source) spool file."""
        spools = self._runs
        spool = spools.get((key, source))
        if spool is None:
            spool = spools[(key, source)] = RunSpool(self._window_dir(key) / f"{source[0]}-{source[1]}.run")
        spool.append(entry)
        failpoint("pipeline.append")

    def streamed_part(self, cut: FileCut, decode: Callable[[list[RawRecord]], Iterable[SourceRecord]]) -> PartWriter:
        """Window scope, streaming: render a part from the window's spools in file order.

        The first part of a cut batch merges its spool segments into one sorted spool (bounded
        memory); every part then reads its slice, and learns its offset ranges on the way.
        """
        assert cut.merged is not None
        merged = self._merged_spool(cut.key, cut.segments)
        sources = [segment.source for segment in cut.segments]
        writer = self._assembler.open_part(cut.key, cut.part, FileSpool(self._window_dir(cut.key) / f"part-{cut.part}"))
        # which offsets of each source the part holds: a byte per offset of the source's segment
        # (they come in file order, not offset order), so memory stays flat per record
        seen = {index: bytearray(high - low + 1) for index, (low, high) in merged.bounds.items()}
        for record in _merged_records(merged, sources, *cut.merged, decode, seen):
            writer.append(record)
        ranges = {}
        for index, marks in seen.items():
            low = merged.bounds[index][0]
            found = _marked_runs(marks, low)
            if found:
                ranges[sources[index]] = found
        cut.sources = dict(sorted(ranges.items()))
        return writer

    def _merged_spool(self, key: FileKey, segments: tuple[Segment, ...]) -> MergedSpool:
        merged = self._merged.get((key, segments))
        if merged is None:
            merged = MergedSpool(self._window_dir(key) / f"merged-{segments[0].first}",
                                 [(i, self._runs[(key, seg.source)], seg.first, seg.end)
                                  for i, seg in enumerate(segments)])
            self._merged[(key, segments)] = merged
        return merged

    def plan_streamed(self, limits: PartLimits, decode: Callable[[list[RawRecord]], Iterable[SourceRecord]],
                      key: FileKey, segments: tuple[Segment, ...], first_part: int) -> list[tuple[int, int, LimitReason]]:
        """Window scope, streaming, with limits beyond the count: the parts of the window's
        merged file order, found by reading it once (decoded a chunk at a time, so memory stays
        flat); the parts then read their slices of the same merged spool."""
        merged = self._merged_spool(key, segments)
        sources = [segment.source for segment in segments]
        fill = PartFill(limits, key, first_part)
        planned: list[tuple[int, int, LimitReason]] = []
        start = position = 0
        for record in _merged_records(merged, sources, 0, merged.count, decode):
            reason = fill.refuses(record)
            if reason is not None:
                planned.append((start, position, reason))
                start = position
                fill.reset(first_part + len(planned))
            position += 1
            if fill.add(record):
                planned.append((start, position, "count"))
                start = position
                fill.reset(first_part + len(planned))
        if position > start:
            planned.append((start, position, "count"))
        return planned

    def drop_window(self, key: FileKey) -> None:
        for key_source in [ks for ks in self._runs if ks[0] == key]:
            self._runs.pop(key_source).discard()
        for key_segments in [ks for ks in self._merged if ks[0] == key]:
            self._merged.pop(key_segments).discard()
        shutil.rmtree(self._window_dir(key), ignore_errors=True)

    def append(self, key: FileKey, part: int, record: SourceRecord) -> None:
        writer = self.parts.get((key, part))
        if writer is None:
            digest = hashlib.sha1(key.id.encode()).hexdigest()[:20]
            spool = FileSpool(self.partition_dir(key.tp) / f"{digest}-{part}.spool")
            writer = self.parts[(key, part)] = self._assembler.open_part(key, part, spool)
        writer.append(record)
        failpoint("pipeline.append")


def _merged_records(merged: MergedSpool, sources: list[TP], first: int, end: int,
                    decode: Callable[[list[RawRecord]], Iterable[SourceRecord]],
                    seen: dict[int, bytearray] | None = None) -> Iterator[SourceRecord]:
    """Positions ``[first, end)`` of a window's merged spool as decoded records, in file order,
    decoded a chunk at a time (memory stays flat); ``seen`` marks each record's offset."""
    chunk: list[RawRecord] = []
    for _, index, offset, value in merged.read(first, end):
        topic, partition = sources[index]
        if seen is not None:
            seen[index][offset - merged.bounds[index][0]] = 1
        chunk.append(RawRecord(topic, partition, offset, None, None, value))
        if len(chunk) >= DECODE_CHUNK:
            yield from decode(chunk)
            chunk = []
    yield from decode(chunk)
