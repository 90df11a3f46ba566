"""``replay --verify``: audit stored files and their manifest against what replay produces."""

from __future__ import annotations

import hashlib
from typing import Any, BinaryIO

from stream_app.sinks.base import FileStore, WriteResult

# Manifest fields replay must reproduce (the cut reason of a wall-clock cut may differ, and
# "partial" marks a replay's own output).
AUDITED_FIELDS = ("records", "bytes", "sha256", "file_key", "scope", "topic", "partition", "group", "window_start",
                  "window_end", "part", "schema", "compression", "offsets")


def _short(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 80 else text[:77] + "..."


class VerifyingSink:
    """Computes what would be written and audits the stored files and manifest against it,
    writing nothing: one finding per line in ``problems``.

    * ``MISSING``: replay produces a file the target does not hold;
    * ``DIFFERENT``: the stored file's bytes differ from what replay produces;
    * ``UNRECORDED``: a produced file has no manifest entry;
    * ``MANIFEST``: a manifest field (records, bytes, sha256, offsets, window, part, ...)
      differs from what replay produces;
    * after a replay of everything (``finish(complete=True)``): ``STRAY``, a stored file replay
      does not produce, and ``UNPRODUCED``, a manifest entry for a file replay does not produce.
    """

    def __init__(self, target: FileStore) -> None:
        self._target = target
        self.problems: list[str] = []
        self._manifest = {e["name"]: e for e in target.manifest_entries()}
        self._produced: set[str] = set()

    def check_writable(self) -> None:
        return None

    def discard_partials(self) -> int:
        return 0

    def stat(self, name: str) -> str | None:
        return self._target.stat(name)

    def stored_names(self) -> list[str]:
        return self._target.stored_names()

    def open_stored(self, name: str) -> BinaryIO:
        return self._target.open_stored(name)

    def location(self, name: str) -> str:
        return self._target.location(name)

    def manifest_entries(self, window_start_ms: int | None = None) -> list[dict]:
        return []

    def write(self, name: str, chunks: Any, before_publish: Any = None) -> WriteResult:
        digest, size = hashlib.sha256(), 0
        for chunk in chunks():
            digest.update(chunk)
            size += len(chunk)
        sha = digest.hexdigest()
        self._produced.add(name)
        stored = self._target.stat(name)
        if stored is None:
            self.problems.append(f"MISSING     {name}: replay would write {size} bytes, sha256 {sha}")
        elif stored != sha:
            self.problems.append(f"DIFFERENT   {name}: stored sha256 {stored}, replay gives {sha}")
        if name not in self._manifest:
            self.problems.append(f"UNRECORDED  {name}: not in the manifest")
        return WriteResult(name, name, size, sha, already_present=True)

    def record_manifest(self, name: str, entry: dict) -> None:
        recorded = self._manifest.get(name)
        if recorded is None:
            return  # reported as UNRECORDED by write
        for field in AUDITED_FIELDS:
            if recorded.get(field) != entry.get(field):
                self.problems.append(f"MANIFEST    {name}: {field} is {_short(recorded.get(field))} in the manifest, "
                                     f"replay gives {_short(entry.get(field))}")

    def finish(self, complete: bool) -> None:
        """After the run; ``complete``: replay produced every file the input gives (no range)."""
        if not complete:
            return
        for name in self._target.stored_names():
            if name not in self._produced:
                self.problems.append(f"STRAY       {name}: stored, but replay produces no such file")
        for name in sorted(self._manifest):
            if name not in self._produced:
                self.problems.append(f"UNPRODUCED  {name}: in the manifest, but replay produces no such file")
