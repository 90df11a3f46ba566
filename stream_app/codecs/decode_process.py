"""Avro decoding in a helper process: the worker's hot path on a second core.

A worker is one Python process, and its threads share one GIL; fastavro's reading of the record
body is most of its CPU time.  ``ProcessAvroDecoder`` sends the payloads of a batch, in chunks,
to a helper process that reads them (``read_confluent``: header, schema, body, trailing bytes)
and answers with the plain values, which ``marshal`` carries back at a quarter of the cost of
reading them.  The worker converts the top-level logical fields itself (``convert_plain``), so
the records are exactly those of the in-process ``AvroDecoder``: the same code reads them.

Chunks are pipelined: while the worker windows the records of chunk n, the helper reads chunk
n+1; and ``prefetch`` sends the whole next fetched batch while the worker still windows,
finalizes and commits the one before (prefetched batches queue up in order).  Frames are
written by a sender thread, so a full pipe (the helper busy) never stalls the worker's main
thread, and read by a receiver thread, so the helper never waits for the main thread to read
(it would stop a pipe's worth ahead of it).  If the helper dies, the rest of the batch (and later batches, after a restart of the
helper) is decoded in the worker: decoding is pure, so nothing is lost or changed.

Protocol on the helper's stdin/stdout: one JSON line with the settings, then frames of a 4-byte
big-endian length and a body.  A request body is ``marshal`` of a list of payloads (bytes or
None); a response body is b"M" + ``marshal`` (or b"P" + ``pickle`` when a value holds objects
marshal cannot carry, e.g. nested logical types) of one item per payload:
``(0, schema_id, plain value)``, or with ``carry`` when the value has a packed form
``(0, schema_id, packed form, plain value of the fields the routing stage reads)``,
``(1, reason, detail)`` for a decode error, or
``(2, message)`` when the schema registry could not be asked.
"""

from __future__ import annotations

import fcntl
import json
import logging
import marshal
import os
import pickle
import queue
import signal
import struct
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import IO, Any

from stream_app.codecs import DecodeError
from stream_app.codecs.avro import AvroDecoder, SchemaResolver, convert_plain, read_confluent
from stream_app.codecs.carried import CarryingAvroDecoder, pack, unpack
from stream_app.codecs.registry import RegistryUnavailable
from stream_app.core.records import RawRecord, SourceRecord

log = logging.getLogger(__name__)

CHUNK = 500  # records per request: small enough to pipeline a batch, large enough to amortize
FIRST_CHUNK = 100
AHEAD = 2  # chunks sent before their turn: the helper always has the next one at hand
PIPE_BYTES = 1 << 20
_LENGTH = struct.Struct(">I")
_OK, _ERROR, _REGISTRY = 0, 1, 2


def _widen(pipe: IO[bytes]) -> None:
    """Room for a few chunks in the pipe (Linux): a write then never waits for the other side to
    be scheduled, which under the helper's GIL can take a whole switch interval."""
    try:
        fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES)
    except (AttributeError, OSError):
        pass  # another OS, or a lower pipe-max-size: smaller pipes, same results


class HelperGone(Exception):
    """The helper process exited or its pipe broke."""


def _write_frame(stream: IO[bytes], body: bytes) -> None:
    # Straight to the file descriptor, partial writes resumed here: through a BufferedWriter, a
    # write into a full pipe that was interrupted (seen with py-spy attached to the helper) lost
    # or repeated bytes mid-frame, and the reader got a corrupt answer.
    stream.flush()
    view = memoryview(_LENGTH.pack(len(body)) + body)
    fd = stream.fileno()
    while view:
        view = view[os.write(fd, view):]


def _read_exactly(stream: IO[bytes], size: int) -> bytes:
    data = stream.read(size)
    if data is None or len(data) != size:
        raise HelperGone("the decode helper closed its output")
    return data


def _read_frame(stream: IO[bytes]) -> bytes:
    (size,) = _LENGTH.unpack(_read_exactly(stream, _LENGTH.size))
    return _read_exactly(stream, size)


class _FrameSender:
    """Writes request frames to the helper's stdin from a thread of its own.

    A write into a full pipe blocks until the helper reads (which waits on the helper's GIL); in
    a thread, that wait no longer holds up the worker's main thread, which windows the records of
    the chunk before meanwhile.  One thread writes every frame, so frames keep their order.
    """

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        self._queue: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._error: Exception | None = None
        self._thread = threading.Thread(target=self._run, name="decode-helper-sender", daemon=True)
        self._thread.start()

    def send(self, body: bytes) -> None:
        if self._error is not None:
            raise HelperGone(str(self._error))
        self._queue.put(body)

    def _run(self) -> None:
        while (body := self._queue.get()) is not None:
            try:
                _write_frame(self._stream, body)
            except (OSError, ValueError) as exc:  # the helper exited: its reader sees the end too
                self._error = exc
                return

    def stop(self, timeout_s: float) -> bool:
        """Drop the frames not yet written and end the thread; False if a write is still stuck."""
        try:
            while True:
                self._queue.get_nowait()
        except queue.Empty:
            pass
        self._queue.put(None)
        self._thread.join(timeout_s)
        return not self._thread.is_alive()


class _FrameReceiver:
    """Reads the helper's answer frames from a thread of its own, as they come.

    Without it the helper could run only a pipe's worth (about 2,000 records) ahead of the
    worker's reading: while the main thread finalized, committed or ran the file stage, the
    helper stood blocked on a full pipe and the decoding did not overlap that work.  The answers
    queued here are those of the prefetched batches (at most the next fetched batch ahead).
    """

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        self._queue: queue.SimpleQueue[bytes | HelperGone] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="decode-helper-receiver", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while True:
                self._queue.put(_read_frame(self._stream))
        except HelperGone as exc:  # the helper exited (or was stopped): its output ended
            self._queue.put(exc)
        except (OSError, ValueError) as exc:
            self._queue.put(HelperGone(str(exc)))

    def receive(self) -> bytes:
        body = self._queue.get()
        if isinstance(body, HelperGone):
            self._queue.put(body)  # every later receive fails the same way
            raise body
        return body

    def join(self, timeout_s: float) -> None:
        self._thread.join(timeout_s)


class ProcessAvroDecoder:
    """``AvroDecoder`` whose bulk path reads record bodies in a helper process."""

    def __init__(self, local_schemas: dict[int, str], registry: dict[str, Any] | None, event_time_field: str,
                 max_record_bytes: int, restart_after_s: float = 60.0, carry: bool = False,
                 reads: Sequence[str] | None = None, clock: Callable[[], float] = time.monotonic,
                 time_as_millis: bool = False) -> None:
        # carry: the routing stage's decoder.  Records come with their carried form, which the
        # helper packs (codecs/carried.py); their value then holds only the fields in ``reads``
        # (event time, groupBy: all the routing stage looks at; None: every field), so the worker
        # neither unpacks nor converts the rest.  time_as_millis: the event time is read only as
        # the record's epoch ms, so with ``reads`` its field is left out of the value (a timestamp-
        # millis field: not built as a datetime that nobody reads).
        self._settings = {"local": {str(k): v for k, v in local_schemas.items()}, "registry": registry,
                          "max": max_record_bytes, "carry": carry, "reads": None if reads is None else list(reads)}
        self._resolver = SchemaResolver(local_schemas, registry)
        self._local: AvroDecoder = (CarryingAvroDecoder if carry else AvroDecoder)(
            self._resolver, event_time_field, max_record_bytes)
        self._time_field = event_time_field
        self._time_as_millis = time_as_millis
        self._proc: subprocess.Popen | None = None
        self._sender: _FrameSender | None = None
        self._receiver: _FrameReceiver | None = None
        self._in_flight = 0  # requests whose responses were not read yet
        # After a failure the helper is started again only this much later: a helper that cannot
        # start would otherwise cost a process start (and a warning) per batch.
        self._restart_after_s = restart_after_s
        self._restart_at = 0.0
        self._clock = clock
        # Prefetched batches (all their chunks sent), in the order their answers come back, with
        # their number of chunks.  Any other answer in flight comes before theirs and is read by
        # nobody any more: the rest of a batch whose reader stopped early, or a dropped batch.
        self._prefetched: deque[tuple[Sequence[RawRecord], int]] = deque()

    def decode(self, raw: RawRecord) -> SourceRecord:
        return self._local.decode(raw)

    # -- helper lifecycle ---------------------------------------------------------------------
    def _helper(self) -> subprocess.Popen | None:
        if self._proc is not None and self._proc.poll() is None:
            return self._proc
        if self._clock() < self._restart_at:
            return None
        self.close()  # a helper that exited: its sender thread ends, its pipes are closed
        proc = subprocess.Popen([sys.executable, "-m", __name__], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                bufsize=1 << 20)
        assert proc.stdin is not None and proc.stdout is not None
        for pipe in (proc.stdin, proc.stdout):
            _widen(pipe)
        self._proc = proc
        try:
            proc.stdin.write(json.dumps(self._settings).encode() + b"\n")
            proc.stdin.flush()
        except OSError as exc:  # it exited at once (BrokenPipeError)
            raise HelperGone(str(exc)) from None
        self._sender = _FrameSender(proc.stdin)
        self._receiver = _FrameReceiver(proc.stdout)
        return proc

    def close(self) -> None:
        proc, self._proc = self._proc, None
        sender, self._sender = self._sender, None
        receiver, self._receiver = self._receiver, None
        self._in_flight = 0  # no answer comes from a closed helper
        self._prefetched.clear()
        if proc is None:
            return
        try:
            if sender is not None and not sender.stop(timeout_s=2):
                raise subprocess.TimeoutExpired("decode helper", 2)  # it stopped reading its input
            assert proc.stdin is not None
            proc.stdin.close()  # the helper exits at the end of its input
            proc.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait()
            if sender is not None:
                sender.stop(timeout_s=5)  # the kill broke the pipe its write waited on
        if receiver is not None:
            receiver.join(timeout_s=5)  # the helper exited: its output ends, and the thread with it
        for stream in (proc.stdout,):
            if stream is not None:
                stream.close()

    def _send(self, chunk: Sequence[RawRecord]) -> None:
        assert self._sender is not None
        self._sender.send(marshal.dumps([raw.value for raw in chunk]))
        self._in_flight += 1

    def _receive(self, proc: subprocess.Popen) -> list:
        assert self._receiver is not None
        body = self._receiver.receive()
        self._in_flight -= 1
        return marshal.loads(body[1:]) if body[:1] == b"M" else pickle.loads(body[1:])

    # -- bulk decoding ------------------------------------------------------------------------
    @staticmethod
    def _chunks(raws: Sequence[RawRecord]) -> list[Sequence[RawRecord]]:
        # A small first chunk: the worker waits for it with nothing to do.
        bounds = [0, min(FIRST_CHUNK, len(raws)), *range(FIRST_CHUNK + CHUNK, len(raws), CHUNK), len(raws)]
        return [raws[a:b] for a, b in zip(bounds, bounds[1:]) if b > a]

    def _failed(self, exc: HelperGone) -> None:
        if self._proc is not None:
            log.warning("decode helper process failed (%s); decoding in the worker process for %.0f s",
                        exc, self._restart_after_s)
            self._restart_at = self._clock() + self._restart_after_s
            self.close()

    def prefetch(self, raws: Sequence[RawRecord]) -> None:
        """Send a batch ``decode_many`` gets later: the helper reads it while the worker still
        windows, finalizes and commits the batches before it.  Batches are decoded in the order
        they were prefetched; one that is never decoded (dropped by a rebalance) is skipped."""
        if not raws:
            return
        try:
            proc = self._helper()
            if proc is None:
                return
            chunks = self._chunks(raws)
            for chunk in chunks:  # all of it: the helper's answers wait in its pipe
                self._send(chunk)
            self._prefetched.append((raws, len(chunks)))
        except HelperGone as exc:
            self._failed(exc)

    def decode_many(self, raws: Sequence[RawRecord]) -> Iterator[SourceRecord | DecodeError]:
        done = 0  # records whose results were handed out
        try:
            proc = self._helper()
            if proc is None:
                raise HelperGone("waiting before the next start")
            # Counted, not remembered: every answer in flight ahead of this batch's is one that
            # nobody reads any more.  Prefetched batches after this one stay queued; if it was not
            # prefetched, its answers come after all others, which are then read and dropped.
            position = next((i for i, (batch, _) in enumerate(self._prefetched) if batch is raws), None)
            if position is None:
                ahead, sent = self._in_flight, 0
                self._prefetched.clear()
            else:
                ahead = self._in_flight - sum(count for _, count in list(self._prefetched)[position:])
                for _ in range(position):
                    self._prefetched.popleft()
                sent = self._prefetched.popleft()[1]
            for _ in range(ahead):
                self._receive(proc)
            chunks = self._chunks(raws)
            for index, chunk in enumerate(chunks):
                # The helper always holds the next AHEAD chunks: it reads them while this one is windowed.
                while sent < min(index + 1 + AHEAD, len(chunks)):
                    self._send(chunks[sent])
                    sent += 1
                items = self._receive(proc)
                if len(items) != len(chunk):
                    raise HelperGone(f"the decode helper answered {len(items)} results for {len(chunk)} records")
                for raw, item in zip(chunk, items):
                    result = self._result(raw, item)
                    done += 1
                    yield result
        except HelperGone as exc:
            self._failed(exc)
            for raw in raws[done:]:
                try:
                    yield self._local.decode(raw)
                except DecodeError as error:
                    yield error

    def _result(self, raw: RawRecord, item: Any) -> SourceRecord | DecodeError:
        if item[0] == _OK:
            schema_id, value = item[1], item[2]
            reader = self._resolver.get(schema_id)
            if reader is None:  # known to the helper a moment ago: the registry forgot it
                return DecodeError("UNKNOWN_SCHEMA_ID", f"schema id {schema_id} is not known")
            carried = None
            if len(item) == 4:  # carry: the packed form and the fields read, or None for all
                carried, value = value, item[3] if item[3] is not None else unpack(reader, value)
            try:
                millis = convert_plain(schema_id, reader, value, self._time_field, self._time_as_millis)
                return self._local.source_record(raw, value, millis, carried)
            except DecodeError as exc:
                return exc
        if item[0] == _ERROR:
            return DecodeError(item[1], item[2])
        raise RegistryUnavailable(item[1])


# -- the helper process -------------------------------------------------------------------------
def _decode_payload(payload: bytes | None, resolver: SchemaResolver, max_bytes: int, carry: bool,
                    reads: list[str] | None) -> tuple:
    try:
        if payload is None:
            raise DecodeError("NULL_VALUE", "record value is null (tombstone)")
        if len(payload) > max_bytes:
            raise DecodeError("OVERSIZED_RECORD", f"record value has {len(payload)} bytes, limit is {max_bytes}")
        schema_id, reader, value = read_confluent(payload, resolver)
        if carry:
            packed = pack(schema_id, reader, value)
            if packed is not None:
                return (_OK, schema_id, packed, None if reads is None else {n: value[n] for n in reads if n in value})
        return (_OK, schema_id, value)
    except DecodeError as exc:
        return (_ERROR, exc.reason, exc.detail)
    except RegistryUnavailable as exc:
        return (_REGISTRY, str(exc))


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the worker decides when to stop (closing stdin)
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing but frames on the frame stream
    settings = json.loads(stdin.readline())
    resolver = SchemaResolver({int(k): v for k, v in settings["local"].items()}, settings["registry"])
    max_bytes, carry, reads = settings["max"], settings["carry"], settings["reads"]
    # Requests are read by a thread as they come: the worker may send the next chunk before it
    # reads this answer, and neither side may block on a full pipe while the other waits.
    requests: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()

    def read_requests() -> None:
        try:
            while True:
                requests.put(_read_frame(stdin))
        except (HelperGone, OSError, ValueError):
            requests.put(None)

    threading.Thread(target=read_requests, daemon=True).start()
    while (body := requests.get()) is not None:
        items = [_decode_payload(p, resolver, max_bytes, carry, reads) for p in marshal.loads(body)]
        try:
            answer = b"M" + marshal.dumps(items)
        except ValueError:  # objects marshal cannot carry (nested logical types)
            answer = b"P" + pickle.dumps(items, protocol=pickle.HIGHEST_PROTOCOL)
        try:
            _write_frame(stdout, answer)
        except OSError:
            break
    os._exit(0)


if __name__ == "__main__":
    main()
