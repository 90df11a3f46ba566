"""Deterministic gzip: no file name and a zero mtime in the header, so replays stay byte-identical."""

from __future__ import annotations

import gzip
import io
from collections.abc import Callable, Iterable, Iterator

ChunkSource = Callable[[], Iterable[bytes]]


def gzip_chunks(chunks: Iterable[bytes], level: int = 6) -> Iterator[bytes]:
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", compresslevel=level, fileobj=buffer, mtime=0) as gz:
        for chunk in chunks:
            gz.write(chunk)
            if buffer.tell() >= 1 << 20:
                yield buffer.getvalue()
                buffer.seek(0)
                buffer.truncate()
    yield buffer.getvalue()


def gzipped(source: ChunkSource, level: int = 6) -> ChunkSource:
    return lambda: gzip_chunks(source(), level)
