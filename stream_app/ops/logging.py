"""Structured JSON logs: one object per line, with the file window as correlation id.

Log calls pass ``extra={"file_key": ...}`` where they concern a file window; the formatter
copies it into the object, so every line about a window can be found by that id.  Messages
carry coordinates, reason codes and error classes, never record contents.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TextIO

import orjson

_CONTEXT_FIELDS = ("file_key", "part", "topic", "partition")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in _CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


# Loggers of the Kafka clients (aiokafka, Faust's transport and its service framework, librdkafka
# through confluent-kafka): the ones that repeat a line per node or partition per retry.
CLIENT_LOGGERS = ("aiokafka", "kafka", "faust.transport", "faust.tables", "mode", "librdkafka")


class OutageFilter(logging.Filter):
    """While a broker is unreachable the client libraries log the same line for every node and
    partition on every retry (thousands per minute).  Here a line of a kind (logger, message,
    arguments: so one per partition) passes once, then its repeats are held back for a backoff
    that doubles from ``first_s`` to ``max_s``; the next one through says how many were held
    back.  A kind not seen for ``max_s`` starts again at ``first_s``.  Other loggers, and lines
    below WARNING, pass untouched.
    """

    def __init__(self, first_s: float = 1.0, max_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._first, self._max, self._clock = first_s, max_s, clock
        self._kinds: dict[tuple, list[float]] = {}  # kind -> [next allowed, step, last seen, held back]

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or not record.name.startswith(CLIENT_LOGGERS):
            return True
        now = self._clock()
        try:  # floats (durations, rates) vary line to line: they do not make a kind
            args = tuple("<float>" if isinstance(a, float) else str(a) for a in record.args) \
                if isinstance(record.args, tuple) else (str(record.args),)
        except Exception:
            args = ()
        kind = (record.name, str(record.msg), args)
        state = self._kinds.get(kind)
        if state is None or now - state[2] > self._max:
            if len(self._kinds) > 10_000:
                self._kinds.clear()
            self._kinds[kind] = [now + self._first, self._first, now, 0]
            return True
        state[2] = now
        if now < state[0]:
            state[3] += 1
            return False
        if state[3]:
            record.msg = f"{record.msg} ({int(state[3])} like it held back in the last {state[1]:.0f} s)"
        state[1] = min(state[1] * 2, self._max)
        state[0], state[3] = now + state[1], 0
        return True


def logging_config(level: str, fmt: str) -> dict:
    """A ``logging.config.dictConfig`` for the worker (Faust applies it at start)."""
    formatter = {"()": f"{__name__}.JsonFormatter"} if fmt == "json" else {
        "format": "[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": formatter},
        "filters": {"outage": {"()": f"{__name__}.OutageFilter"}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "default", "filters": ["outage"]}},
        "root": {"level": level, "handlers": ["stderr"]},
    }


def dump_stacks(file: TextIO) -> None:
    """Every thread's stack and every task's, frames only (SIGUSR1).  mode's own dump also
    prints each frame's local variables, which hold record values (card numbers, names): they
    must never reach the log."""
    names = {t.ident: t.name for t in threading.enumerate()}
    for ident, frame in sys._current_frames().items():
        print(f"THREAD {names.get(ident, ident)}", file=file)
        traceback.print_stack(frame, file=file)
    try:
        tasks = asyncio.all_tasks()
    except RuntimeError:  # no running loop
        tasks = set()
    for task in tasks:
        task.print_stack(file=file)
    file.flush()
