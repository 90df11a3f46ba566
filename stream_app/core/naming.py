"""File-name safety: a rendered name is a single plain file name inside the target directory."""

from __future__ import annotations

import re

RESERVED_NAMES = frozenset({"manifest.jsonl"})
_FORBIDDEN = re.compile(r"[/\\\x00-\x1f\x7f]")


class UnsafeFileName(ValueError):
    pass


def check_file_name(name: str) -> str:
    """Return ``name`` if it is a safe plain file name, else raise ``UnsafeFileName``."""
    if not name or not name.strip():
        raise UnsafeFileName("file name renders empty")
    if _FORBIDDEN.search(name):
        raise UnsafeFileName("file name contains a path separator or control character")
    if name in (".", "..") or ".." in name:
        raise UnsafeFileName("file name contains '..'")
    if name.startswith("."):
        raise UnsafeFileName("file name starts with '.' (hidden files are reserved)")
    if name.endswith(".tmp"):
        raise UnsafeFileName("file name ends with '.tmp' (reserved for files being written)")
    if name in RESERVED_NAMES:
        raise UnsafeFileName(f"file name {name!r} is reserved")
    if len(name.encode("utf-8")) > 255:
        raise UnsafeFileName("file name is longer than 255 bytes")
    return name


def remote_file_name(template: str, name: str, part: int, window_start_ms: int) -> str:
    """The name a delivery gives a file on the remote server: ``template`` with ``{name}``,
    ``{stem}``, ``{ext}`` (with its dot), ``{part}`` and ``{window}`` (the window start, UTC
    ``YYYYMMDDHHMM``); a safe plain file name, or ``UnsafeFileName``."""
    from datetime import UTC, datetime

    stem, dot, ext = name.partition(".")
    window = datetime.fromtimestamp(window_start_ms / 1000, UTC).strftime("%Y%m%d%H%M")
    return check_file_name(template.format_map(
        {"name": name, "stem": stem, "ext": dot + ext, "part": part, "window": window}))
