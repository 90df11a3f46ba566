"""Structured JSON logs: one object per line, with the file window as correlation id.

Log calls pass ``extra={"file_key": ...}`` where they concern a file window; the formatter
copies it into the object, so every line about a window can be found by that id.  Messages
carry coordinates, reason codes and error classes, never record contents.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

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


def logging_config(level: str, fmt: str) -> dict:
    """A ``logging.config.dictConfig`` for the worker (Faust applies it at start)."""
    formatter = {"()": f"{__name__}.JsonFormatter"} if fmt == "json" else {
        "format": "[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": formatter},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "default"}},
        "root": {"level": level, "handlers": ["stderr"]},
    }
