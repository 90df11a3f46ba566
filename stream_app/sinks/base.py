"""The sink interface: one atomic ``write`` of a complete file."""

from __future__ import annotations

import errno
from dataclasses import dataclass
from typing import Protocol

from stream_app.core.compression import ChunkSource


class SinkError(Exception):
    """A write that failed; ``error_class`` is stable (EIO, ENOSPC, EACCES, FILE_CONFLICT, ...)."""

    def __init__(self, message: str, error_class: str, transient: bool = True) -> None:
        super().__init__(message)
        self.error_class = error_class
        self.transient = transient


class FileConflict(SinkError):
    """A file of that name exists with different bytes: never overwritten."""

    def __init__(self, name: str) -> None:
        super().__init__(f"{name} exists with different content; refusing to overwrite", "FILE_CONFLICT", False)


@dataclass(frozen=True, slots=True)
class WriteResult:
    name: str
    location: str
    bytes: int
    sha256: str
    # The identical file was already there (a re-finalize after restart): nothing was written.
    already_present: bool
    # A time-limited download link, where the sink offers one (S3 presigned GET).
    url: str | None = None


class Sink(Protocol):
    def check_writable(self) -> None:
        """Raise ``SinkError`` when the sink cannot take files (preflight, readiness)."""

    def write(self, name: str, chunks: ChunkSource) -> WriteResult:
        """Store the bytes ``chunks()`` yields as ``name``, visible only when complete.

        ``chunks`` may be called more than once (to hash before uploading, or to retry)."""

    def record_manifest(self, name: str, entry: dict) -> None:
        """Append the manifest entry for a stored file (after the file itself)."""

    def discard_partials(self) -> int:
        """At start: remove what a crashed run left half-written; returns how many."""

    def stat(self, name: str) -> str | None:
        """sha256 of the stored file ``name``, or None when there is none (replay --verify)."""

    def stored_names(self) -> list[str]:
        """Every complete file the sink holds (not the manifest, not partial uploads): replay --verify."""

    def manifest_entries(self, window_start_ms: int | None = None) -> list[dict]:
        """Manifest entries, optionally only those of one window start."""


def os_error_class(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno or 0, type(exc).__name__)

