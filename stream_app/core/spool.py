"""Where a part's rendered body lines wait until the part is finalized.

In memory for ordinary parts, on disk in streaming mode so that memory does not grow with the
number of records in a window.  Either way the body can be read any number of times, which lets
a sink hash it before uploading and lets a failed write be retried.
"""

from __future__ import annotations

import heapq
import os
import pickle
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Protocol

READ_BLOCK = 1 << 20


class Spool(Protocol):
    def write(self, data: bytes) -> None: ...

    def chunks(self) -> Iterator[bytes]: ...

    def discard(self) -> None: ...


class MemorySpool:
    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def write(self, data: bytes) -> None:
        self._parts.append(data)

    def chunks(self) -> Iterator[bytes]:
        yield b"".join(self._parts)

    def discard(self) -> None:
        self._parts = []


class FileSpool:
    """An append-only file; read back in blocks.  Deleted when the part is finalized."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(path, "wb")  # truncates what a crashed run may have left

    def write(self, data: bytes) -> None:
        self._fh.write(data)

    def chunks(self) -> Iterator[bytes]:
        if not self._fh.closed:
            self._fh.flush()
        with open(self.path, "rb") as fh:
            while block := fh.read(READ_BLOCK):
                yield block

    def discard(self) -> None:
        self._fh.close()
        self.path.unlink(missing_ok=True)


class RunSpool:
    """Window scope, streaming: the routed entries (offset, event time, value bytes) of one
    source partition for one file window, in arrival order, on disk until the window is written."""

    _HEAD = struct.Struct(">qqi")

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(path, "wb")
        self.count = 0

    def append(self, entry: tuple[int, int, bytes | None]) -> None:
        self.count += 1
        offset, event_time, value = entry
        self._fh.write(self._HEAD.pack(offset, event_time, -1 if value is None else len(value)))
        if value:
            self._fh.write(value)

    def read(self, first: int, end: int, chunk: int = 2000) -> Iterator[list[tuple[int, int, bytes | None]]]:
        """Entries at positions ``[first, end)``, ``chunk`` at a time."""
        if not self._fh.closed:
            self._fh.flush()
        head = self._HEAD
        with open(self.path, "rb") as fh:
            for _ in range(first):
                _, _, length = head.unpack(fh.read(head.size))
                fh.seek(max(length, 0), os.SEEK_CUR)
            batch: list[tuple[int, int, bytes | None]] = []
            for _ in range(end - first):
                offset, event_time, length = head.unpack(fh.read(head.size))
                batch.append((offset, event_time, None if length < 0 else fh.read(length)))
                if len(batch) >= chunk:
                    yield batch
                    batch = []
            if batch:
                yield batch

    def discard(self) -> None:
        self._fh.close()
        self.path.unlink(missing_ok=True)


# An entry in file order: (event time ms, source index, offset, value bytes).
OrderedEntry = tuple[int, int, int, "bytes | None"]


class MergedSpool:
    """Routed entries of several sources in file order — event time, then source (topic,
    partition), then offset — sorted on disk with bounded memory: sorted runs of ``run_size``
    entries, then one k-way merge into a single file.  ``read(first, end)`` gives a slice of it.
    """

    _ENTRY = struct.Struct(">qHqi")

    def __init__(self, path: Path, segments: list[tuple[int, RunSpool, int, int]], run_size: int = 10_000,
                 mark_every: int = 10_000) -> None:
        """``segments``: (source index, spool, first position, end position) per source."""
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        runs: list[Path] = []
        # (lowest, highest) offset of each source's segment: spools hold offsets in increasing order
        self.bounds: dict[int, tuple[int, int]] = {}
        for index, spool, first, end in segments:
            for chunk in spool.read(first, end, run_size):
                low = self.bounds.get(index, (chunk[0][0], 0))[0]
                self.bounds[index] = (low, chunk[-1][0])
                run = path.with_name(f"{path.name}.run{len(runs)}")
                with open(run, "wb") as fh:
                    for event_time, offset, value in sorted((e, o, v) for o, e, v in chunk):
                        self._write(fh, (event_time, index, offset, value))
                runs.append(run)
        self._marks: list[int] = []  # byte position of every mark_every-th entry
        self._mark_every = mark_every
        self.count = 0
        with open(path, "wb") as out:
            for entry in heapq.merge(*(self._entries(run) for run in runs)):
                if self.count % mark_every == 0:
                    self._marks.append(out.tell())
                self._write(out, entry)
                self.count += 1
        for run in runs:
            run.unlink()

    def _write(self, fh: BinaryIO, entry: OrderedEntry) -> None:
        event_time, index, offset, value = entry
        fh.write(self._ENTRY.pack(event_time, index, offset, -1 if value is None else len(value)))
        if value:
            fh.write(value)

    def _entries(self, path: Path, skip: int = 0, start_byte: int = 0) -> Iterator[OrderedEntry]:
        head = self._ENTRY
        with open(path, "rb") as fh:
            fh.seek(start_byte)
            while True:
                raw = fh.read(head.size)
                if not raw:
                    return
                event_time, index, offset, length = head.unpack(raw)
                if skip:
                    skip -= 1
                    fh.seek(max(length, 0), os.SEEK_CUR)
                    continue
                yield event_time, index, offset, (None if length < 0 else fh.read(length))

    def read(self, first: int, end: int) -> Iterator[OrderedEntry]:
        mark = min(first // self._mark_every, len(self._marks) - 1) if self._marks else 0
        start_byte = self._marks[mark] if self._marks else 0
        entries = self._entries(self.path, skip=first - mark * self._mark_every, start_byte=start_byte)
        for _ in range(end - first):
            entry = next(entries, None)
            if entry is None:
                return
            yield entry

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)


class RecordSpill:
    """The records of an open part (or window) moved out of memory under backpressure, read back
    when it is cut.  Memory pressure then changes where records wait, never which file holds
    them: the cut is the one the records alone decide.  A private file of this worker (pickled
    chunks, written and read only by it), deleted when the part is cut or its partition moves;
    what it held is above the committed offsets, so a restart reads it again from Kafka."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def extend(self, records: list) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "ab") as fh:
            pickle.dump(records, fh, protocol=pickle.HIGHEST_PROTOCOL)

    def load(self) -> list:
        """Every spilled record, in the order spilled."""
        records: list = []
        with open(self.path, "rb") as fh:
            while True:
                try:
                    records.extend(pickle.load(fh))
                except EOFError:
                    return records

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)
