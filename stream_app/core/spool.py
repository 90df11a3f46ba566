"""Where a part's rendered body lines wait until the part is finalized.

In memory for ordinary parts, on disk in streaming mode so that memory does not grow with the
number of records in a window.  Either way the body can be read any number of times, which lets
a sink hash it before uploading and lets a failed write be retried.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Iterator, Protocol

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
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


class RunSpool:
    """Window scope, streaming: the routed entries (offset, event time, value bytes) of one
    source partition for one file window, in arrival order, on disk until the window is written."""

    _HEAD = struct.Struct(">qqi")

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(path, "wb")

    def append(self, entry: tuple[int, int, bytes | None]) -> None:
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
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
