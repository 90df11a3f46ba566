"""A helper process beside the worker: request frames in, answer frames out, in order.

The worker is one Python process whose threads share one GIL; pure per-record work (reading Avro
bodies, projecting and rendering structured rows) can run in a child process on another core.
``HelperClient`` starts the child (``python -m <module>``), writes request frames from a thread
of its own and reads the answers from another, and restarts the child only some time after it
failed: the caller then does the work itself, since the work is pure, nothing is lost or changed.
``serve`` is the child's side.

Protocol on the child's stdin/stdout: one JSON line with the settings, then frames of a 4-byte
big-endian length and a body; one answer frame per request frame, in order.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import queue
import signal
import struct
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import IO, Any

log = logging.getLogger(__name__)

PIPE_BYTES = 1 << 20
_LENGTH = struct.Struct(">I")


def _widen(pipe: IO[bytes]) -> None:
    """Room for a few chunks in the pipe (Linux): a write then never waits for the other side to
    be scheduled, which under the helper's GIL can take a whole switch interval."""
    try:
        fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES)
    except (AttributeError, OSError):
        pass  # another OS, or a lower pipe-max-size: smaller pipes, same results


class HelperGone(Exception):
    """The helper process exited or its pipe broke."""


def write_frame(stream: IO[bytes], body: bytes) -> None:
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
        raise HelperGone("the helper closed its output")
    return data


def read_frame(stream: IO[bytes]) -> bytes:
    (size,) = _LENGTH.unpack(_read_exactly(stream, _LENGTH.size))
    return _read_exactly(stream, size)


class FrameSender:
    """Writes request frames to the helper's stdin from a thread of its own.

    A write into a full pipe blocks until the helper reads (which waits on the helper's GIL); in
    a thread, that wait no longer holds up the worker's main thread, which windows the records of
    the chunk before meanwhile.  One thread writes every frame, so frames keep their order.
    """

    def __init__(self, stream: IO[bytes], name: str) -> None:
        self._stream = stream
        self._queue: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._error: Exception | None = None
        self._thread = threading.Thread(target=self._run, name=f"{name}-sender", daemon=True)
        self._thread.start()

    def send(self, body: bytes) -> None:
        if self._error is not None:
            raise HelperGone(str(self._error))
        self._queue.put(body)

    def _run(self) -> None:
        while (body := self._queue.get()) is not None:
            try:
                write_frame(self._stream, body)
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


class FrameReceiver:
    """Reads the helper's answer frames from a thread of its own, as they come.

    Without it the helper could run only a pipe's worth (about 2,000 records) ahead of the
    worker's reading: while the main thread finalized, committed or ran the file stage, the
    helper stood blocked on a full pipe and the decoding did not overlap that work.  The answers
    queued here are those of the prefetched batches (at most the next fetched batch ahead).
    """

    def __init__(self, stream: IO[bytes], name: str) -> None:
        self._stream = stream
        self._queue: queue.SimpleQueue[bytes | HelperGone] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=f"{name}-receiver", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while True:
                self._queue.put(read_frame(self._stream))
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


class HelperClient:
    """The worker's side of one helper process (``helper_module`` run with ``-m``).

    ``_helper()`` gives the running child, starting one when none runs, or None while waiting
    before a restart; ``_failed`` stops a child that failed and decides when to try again."""

    helper_module: str = ""
    helper_name = "helper"  # in warnings and thread names
    fallback_work = "working"  # what the worker process does itself meanwhile, for the warning

    def __init__(self, settings: dict[str, Any], restart_after_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._settings = settings
        self._proc: subprocess.Popen | None = None
        self._sender: FrameSender | None = None
        self._receiver: FrameReceiver | None = None
        self._in_flight = 0  # requests whose answers were not read yet
        # After a failure the helper is started again only this much later: a helper that cannot
        # start would otherwise cost a process start (and a warning) per batch.
        self._restart_after_s = restart_after_s
        self._restart_at = 0.0
        self._clock = clock
        # Prefetched batches (all their requests sent), in the order their answers come back, with
        # their number of requests.  Any other answer in flight comes before theirs and is read by
        # nobody any more: the rest of a batch whose reader stopped early, or a dropped batch.
        self._prefetched: deque[tuple[object, int]] = deque()

    def _helper(self) -> subprocess.Popen | None:
        if self._proc is not None and self._proc.poll() is None:
            return self._proc
        if self._clock() < self._restart_at:
            return None
        self.close()  # a helper that exited: its sender thread ends, its pipes are closed
        proc = subprocess.Popen([sys.executable, "-m", self.helper_module], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, bufsize=1 << 20)
        assert proc.stdin is not None and proc.stdout is not None
        for pipe in (proc.stdin, proc.stdout):
            _widen(pipe)
        self._proc = proc
        try:
            proc.stdin.write(json.dumps(self._settings).encode() + b"\n")
            proc.stdin.flush()
        except OSError as exc:  # it exited at once (BrokenPipeError)
            raise HelperGone(str(exc)) from None
        name = self.helper_name.replace(" ", "-")
        self._sender = FrameSender(proc.stdin, name)
        self._receiver = FrameReceiver(proc.stdout, name)
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
                raise subprocess.TimeoutExpired(self.helper_name, 2)  # it stopped reading its input
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
        if proc.stdout is not None:
            proc.stdout.close()

    def _send_body(self, body: bytes) -> None:
        assert self._sender is not None
        self._sender.send(body)
        self._in_flight += 1

    def _receive_body(self) -> bytes:
        assert self._receiver is not None
        body = self._receiver.receive()
        self._in_flight -= 1
        return body

    def _prefetched_requests(self, batch: object) -> int:
        """Before reading ``batch``'s answers: read and drop those in flight ahead of them, and
        give how many of its requests were sent when it was prefetched (0 if it was not).

        Counted, not remembered: every answer in flight ahead of this batch's is one that nobody
        reads any more.  Prefetched batches after this one stay queued; if it was not prefetched,
        its answers come after all others, which are then read and dropped."""
        position = next((i for i, (sent, _) in enumerate(self._prefetched) if sent is batch), None)
        if position is None:
            ahead, sent_requests = self._in_flight, 0
            self._prefetched.clear()
        else:
            ahead = self._in_flight - sum(count for _, count in list(self._prefetched)[position:])
            for _ in range(position):
                self._prefetched.popleft()
            sent_requests = self._prefetched.popleft()[1]
        for _ in range(ahead):
            self._receive_body()
        return sent_requests

    def _failed(self, exc: HelperGone) -> None:
        if self._proc is not None:
            log.warning("%s process failed (%s); %s in the worker process for %.0f s", self.helper_name, exc,
                        self.fallback_work, self._restart_after_s)
            self._restart_at = self._clock() + self._restart_after_s
            self.close()


def serve(build: Callable[[dict[str, Any]], Callable[[bytes], bytes]]) -> None:
    """The child's main loop: ``build(settings)`` gives the function from a request body to its
    answer; requests are answered in order until the worker closes the child's stdin."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the worker decides when to stop (closing stdin)
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing but frames on the frame stream
    answer = build(json.loads(stdin.readline()))
    # Requests are read by a thread as they come: the worker may send the next chunk before it
    # reads this answer, and neither side may block on a full pipe while the other waits.
    requests: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()

    def read_requests() -> None:
        try:
            while True:
                requests.put(read_frame(stdin))
        except (HelperGone, OSError, ValueError):
            requests.put(None)

    threading.Thread(target=read_requests, daemon=True).start()
    while (body := requests.get()) is not None:
        try:
            write_frame(stdout, answer(body))
        except OSError:
            break
    os._exit(0)
