"""The sink interface: one atomic ``write`` of a complete file."""

from __future__ import annotations

import errno
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO, Protocol

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


class NotOwner(SinkError):
    """The worker no longer owns the file's partition: the file is not put in place (its new
    owner writes it), so no replica-private volume holds a second copy."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{name} not put in place: {reason}", "PARTITION_REVOKED")


# Called by a sink just before a file becomes visible (rename, PUT, multipart complete); raises
# ``NotOwner`` when the writer has lost its partition meanwhile.
BeforePublish = Callable[[], None]


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
    """Where files go.  Failure rule: ``write`` either leaves the complete file visible under
    ``name`` or raises ``SinkError`` and leaves nothing visible (no partial file, no overwrite
    of a different file: ``FileConflict``)."""

    def check_writable(self) -> None:
        """Raise ``SinkError`` when the sink cannot take files (preflight, readiness)."""

    def write(self, name: str, chunks: ChunkSource, before_publish: BeforePublish | None = None) -> WriteResult:
        """Store the bytes ``chunks()`` yields as ``name``, visible only when complete.

        ``chunks`` may be called more than once (to hash before uploading, or to retry).
        ``before_publish`` runs just before the file becomes visible; what it raises aborts the
        write and leaves nothing behind."""

    def discard_partials(self) -> int:
        """At start: remove what a crashed run left half-written; returns how many."""


class Manifest(Protocol):
    """One line per stored file: what it holds and which offsets it came from."""

    def record_manifest(self, name: str, entry: dict) -> None:
        """Append the manifest entry for a stored file (after the file itself)."""

    def manifest_entries(self, window_start_ms: int | None = None) -> list[dict]:
        """Manifest entries, optionally only those of one window start."""


class Audit(Protocol):
    """What ``replay --verify`` reads back."""

    def stat(self, name: str) -> str | None:
        """sha256 of the stored file ``name``, or None when there is none."""

    def stored_names(self) -> list[str]:
        """Every complete file the sink holds (not the manifest, not partial uploads)."""

    def location(self, name: str) -> str:
        """Where the stored file ``name`` is (a path, an s3:// URL), as its `created` event says."""

    def open_stored(self, name: str) -> BinaryIO:
        """The stored file ``name`` to read (delivery reads its copy from here); ``SinkError``
        when it cannot be read."""


class FileStore(Sink, Manifest, Audit, Protocol):
    """A sink with its manifest and audit: what the local and S3 sinks are."""


def os_error_class(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno or 0, type(exc).__name__)

