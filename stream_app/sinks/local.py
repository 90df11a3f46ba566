"""Local directory sink: ``NAME.tmp`` + fsync + atomic rename + directory fsync."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import BinaryIO

import orjson

from stream_app.core.compression import ChunkSource
from stream_app.core.naming import check_file_name
from stream_app.ops.faults import failpoint
from stream_app.sinks.base import BeforePublish, FileConflict, NotOwner, SinkError, WriteResult, os_error_class

MANIFEST_NAME = "manifest.jsonl"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class LocalSink:
    def __init__(self, target_dir: str | Path, file_mode: int = 0o640, manifest: bool = True) -> None:
        self.target_dir = Path(target_dir)
        self._mode = file_mode
        self._manifest = manifest
        self._manifested: set[str] | None = None

    def check_writable(self) -> None:
        if not self.target_dir.is_dir():
            raise SinkError(f"target directory {self.target_dir} does not exist", "ENOENT")
        if not os.access(self.target_dir, os.W_OK | os.X_OK):
            raise SinkError(f"target directory {self.target_dir} is not writable", "EACCES")

    def write(self, name: str, chunks: ChunkSource, before_publish: BeforePublish | None = None) -> WriteResult:
        check_file_name(name)
        final = self.target_dir / name
        tmp = self.target_dir / f"{name}.tmp"
        digest = hashlib.sha256()
        size = 0
        try:
            failpoint("sink.write")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, self._mode)
            try:
                os.fchmod(fd, self._mode)  # umask must not loosen or tighten what was configured
                for chunk in chunks():
                    digest.update(chunk)
                    size += len(chunk)
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            sha = digest.hexdigest()
            if final.exists():
                tmp.unlink()
                if _sha256_of(final) != sha:
                    raise FileConflict(name)
                return WriteResult(name, str(final), size, sha, already_present=True)
            failpoint("sink.before-rename")
            if before_publish is not None:
                before_publish()
            os.rename(tmp, final)
            _fsync_dir(self.target_dir)
        except NotOwner:
            tmp.unlink(missing_ok=True)
            raise
        except OSError as exc:
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass
            # transient, every errno: a volume that is full, read-only or refuses for a while
            # (remounts, permission changes, quota) recovers without a restart
            raise SinkError(f"writing {name} failed: {exc.strerror}", os_error_class(exc)) from None
        return WriteResult(name, str(final), size, sha, already_present=False)

    def location(self, name: str) -> str:
        return str(self.target_dir / check_file_name(name))

    def open_stored(self, name: str) -> BinaryIO:
        try:
            return (self.target_dir / check_file_name(name)).open("rb")
        except OSError as exc:
            raise SinkError(f"reading {name} failed: {exc.strerror}", os_error_class(exc)) from None

    def stat(self, name: str) -> str | None:
        path = self.target_dir / check_file_name(name)
        return _sha256_of(path) if path.is_file() else None

    def stored_names(self) -> list[str]:
        return sorted(p.name for p in self.target_dir.iterdir()
                      if p.is_file() and p.name != MANIFEST_NAME and not p.name.endswith(".tmp"))

    def manifest_entries(self, window_start_ms: int | None = None) -> list[dict]:
        path = self.target_dir / MANIFEST_NAME
        if not path.exists():
            return []
        entries = [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]
        return [e for e in entries if window_start_ms is None or e["window_start"] == window_start_ms]

    def discard_partials(self) -> int:
        """Delete ``*.tmp`` files: their records are above the committed offsets and are re-read."""
        removed = 0
        for tmp in self.target_dir.glob("*.tmp"):
            try:
                tmp.unlink()
                removed += 1
            except FileNotFoundError:
                pass
        return removed

    def record_manifest(self, name: str, entry: dict) -> None:
        if not self._manifest:
            return
        path = self.target_dir / MANIFEST_NAME
        if self._manifested is None:
            self._manifested = set()
            if path.exists():
                for line in path.read_bytes().splitlines():
                    if line.strip():
                        self._manifested.add(orjson.loads(line)["name"])
        if name in self._manifested:
            return
        line = orjson.dumps(entry, option=orjson.OPT_SORT_KEYS) + b"\n"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, self._mode)
            try:
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise SinkError(f"appending to {MANIFEST_NAME} failed: {exc.strerror}", os_error_class(exc)) from None
        self._manifested.add(name)
