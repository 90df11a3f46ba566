"""XSD checks of large documents in a helper process, so that they use a second core.

lxml holds the GIL while libxml2 parses and validates, so in the worker the XSD pass of a
structured file (about a fifth of its CPU per record) stopped routing and windowing for as
long as it ran.  ``XsdHelper.check`` sends the document's chunks to one spawned process, which
runs the same ``XsdStream`` over them; the calling thread (the live worker's writer thread)
waits for the verdict without the GIL.

* Documents under ``min_bytes`` are checked in the calling process: the round trip costs more
  than it saves.
* At most ``AHEAD`` groups of ``GROUP_BYTES`` are in flight, so memory stays bounded for
  streamed files.
* A helper that dies or cannot start costs speed, never a verdict: the document is checked in
  the calling process, and the helper is started again ``restart_after_s`` later.
* A document whose own chunks fail (its spool unreadable) raises that error to the caller; the
  helper forgets the document and goes on.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import CancelledError, Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from itertools import chain, count
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MIN_BYTES = 1 << 20
GROUP_BYTES = 1 << 20
AHEAD = 2


class _SourceFailed(Exception):
    """The document's own chunks failed (its spool unreadable, say): the helper is not at fault."""


def _guarded(chunks: Iterator[bytes]) -> Iterator[bytes]:
    try:
        yield from chunks
    except Exception as exc:
        raise _SourceFailed() from exc


class XsdHelper:
    def __init__(self, xsd_path: Path, schema: Any, container_tag: str, min_bytes: int = MIN_BYTES,
                 restart_after_s: float = 60.0) -> None:
        """``schema``: the XSD as the worker loaded it (lxml ``XMLSchema``), for the documents
        checked here; the helper loads its own from ``xsd_path``."""
        self._xsd_path = str(xsd_path)
        self._local_schema = schema
        self._container_tag = container_tag
        self._min_bytes = min_bytes
        self._restart_after_s = restart_after_s
        self._restart_at = 0.0
        self._pool: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()  # the pool's start and shutdown; documents may overlap
        self._ids = count()
        self.documents_checked = 0  # by the helper

    def check(self, chunks: Callable[[], Iterator[bytes]]) -> None:
        """Raise ``FormatError`` (XSD_INVALID) if the document ``chunks()`` gives is not valid."""
        from stream_app.core.formats.xml import XsdStream

        source = chunks()
        head: list[bytes] = []
        size = 0
        for chunk in source:
            head.append(chunk)
            size += len(chunk)
            if size >= self._min_bytes:
                break
        else:  # a small document: checked here
            XsdStream(self._local_schema, self._container_tag).check(head)
            return
        pool = self._started()
        if pool is not None:
            try:
                self._check_in(pool, head, _guarded(source))
                return
            except _SourceFailed as failed:  # the caller's error, raised as it was; the helper goes on
                assert failed.__cause__ is not None
                raise failed.__cause__ from None
            except (BrokenProcessPool, CancelledError, OSError, RuntimeError) as exc:
                # RuntimeError, CancelledError: another document's failure shut the pool down
                self._failed(pool, exc)
        # here, from the start (``source`` is partly read)
        XsdStream(self._local_schema, self._container_tag).check(chunks())

    def _check_in(self, pool: ProcessPoolExecutor, head: list[bytes], rest: Iterator[bytes]) -> None:
        doc = next(self._ids)
        in_flight: deque[Future] = deque()
        group: list[bytes] = []
        size = 0
        try:
            for chunk in chain(head, rest):
                group.append(chunk)
                size += len(chunk)
                if size >= GROUP_BYTES:
                    if len(in_flight) >= AHEAD:
                        in_flight.popleft().result()  # a broken pool raises here, or below
                    in_flight.append(pool.submit(_feed, doc, b"".join(group)))
                    group, size = [], 0
        except _SourceFailed:
            pool.submit(_close, doc)  # the helper forgets the abandoned document
            raise
        if group:
            in_flight.append(pool.submit(_feed, doc, b"".join(group)))
        verdict = pool.submit(_close, doc).result()
        self.documents_checked += 1
        if verdict is not None:
            from stream_app.core.formats.base import FormatError

            raise FormatError(*verdict)

    def _started(self) -> ProcessPoolExecutor | None:
        with self._lock:
            if self._pool is not None:
                return self._pool
            if time.monotonic() < self._restart_at:
                return None
            try:
                # spawn: the worker has threads (Faust, librdkafka), which a fork would copy mid-lock
                self._pool = ProcessPoolExecutor(1, multiprocessing.get_context("spawn"), _start,
                                                 (self._xsd_path, self._container_tag))
            except OSError as exc:
                log.warning("XSD helper process could not start (%s); checking in the worker for %.0f s",
                            exc, self._restart_after_s)
                self._restart_at = time.monotonic() + self._restart_after_s
            return self._pool

    def _failed(self, pool: ProcessPoolExecutor, exc: Exception) -> None:
        with self._lock:
            if self._pool is pool:
                log.warning("XSD helper process failed (%s: %s); checking in the worker for %.0f s",
                            type(exc).__name__, exc, self._restart_after_s)
                self._pool = None
                self._restart_at = time.monotonic() + self._restart_after_s
        pool.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    def helper_pids(self) -> list[int]:
        pool = self._pool
        return [] if pool is None else [p.pid for p in getattr(pool, "_processes", {}).values() if p.pid]


# -- in the helper process ----------------------------------------------------------------------
_helper: dict[str, Any] = {}


def _start(xsd_path: str, container_tag: str) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the worker decides when to stop
    from lxml import etree

    _helper["schema"] = etree.XMLSchema(etree.parse(xsd_path))
    _helper["tag"] = container_tag
    _helper["documents"] = {}


def _feed(doc: int, data: bytes) -> None:
    """One group of a document's bytes; the first error is kept for ``_close``."""
    from stream_app.core.formats.base import FormatError
    from stream_app.core.formats.xml import XsdStream

    documents: dict[int, Any] = _helper["documents"]
    stream = documents.get(doc)
    if stream is None:
        stream = documents[doc] = XsdStream(_helper["schema"], _helper["tag"])
    if isinstance(stream, FormatError):
        return
    try:
        stream.feed(data)
    except FormatError as exc:
        documents[doc] = exc


def _close(doc: int) -> tuple[str, str] | None:
    """The verdict on a document: None, or the ``FormatError``'s message and class."""
    from stream_app.core.formats.base import FormatError

    stream = _helper["documents"].pop(doc, None)
    if stream is None:
        return None  # only a document without bytes: never sent (the worker checks those)
    try:
        if isinstance(stream, FormatError):
            raise stream
        stream.close()
    except FormatError as exc:
        return str(exc), exc.error_class
    return None
