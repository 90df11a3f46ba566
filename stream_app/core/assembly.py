"""What template and structured mode share: the finished file, assembly errors, the variables
every file sees, and the part-writer protocol both modes implement."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from stream_app.core.cycles import ClearingCycles
from stream_app.core.limits import Weigher
from stream_app.core.records import SourceRecord
from stream_app.core.spool import Spool
from stream_app.core.windows import FileCut, FileKey


class AssemblyError(Exception):
    """The file for a cut cannot be produced (template error, bad data).  Never holds values."""

    def __init__(self, message: str, error_class: str = "TEMPLATE_ERROR",
                 source: tuple[str, int, int] | None = None) -> None:
        super().__init__(message)
        self.error_class = error_class
        self.source = source  # (topic, partition, offset) of the record at fault, when one is


@dataclass(frozen=True, slots=True)
class AssembledFile:
    """A finished file: its name and a way to produce its bytes (any number of times)."""

    name: str
    chunks: Callable[[], Iterator[bytes]]
    records: int

    @property
    def body(self) -> bytes:
        return b"".join(self.chunks())


class PartWriter(Protocol):
    """One part of a file window being written: records in file order, then ``finish``."""

    count: int

    def append(self, record: SourceRecord) -> None: ...

    def finish(self) -> AssembledFile: ...

    def discard(self) -> None: ...


class Assembler(Protocol):
    """Template mode and structured mode alike: names, parts written record by record, and whole
    cuts assembled at once (the file stage never asks which mode it has)."""

    def file_name(self, key: FileKey, part: int, record_count: int) -> str: ...

    def open_part(self, key: FileKey, part: int, spool: Spool) -> PartWriter: ...

    def assemble(self, cut: FileCut) -> AssembledFile: ...

    def detail_weigher(self) -> Weigher | None:
        """Each record's rendered detail bytes (``maxBytesPerFile``); None: not per record."""
        ...


def _utc(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


@dataclass(frozen=True)
class FileVariables:
    """The variables every file-level template or pack expression sees, from the file key alone.

    ``business_date`` and ``file_sequence`` come from the clearing cycles (the window's local
    business date and its ordinal within it); ``sender_id`` / ``receiver_id`` from
    ``worker.parties`` when configured.  Partition-scoped files also see ``topic`` and
    ``partition``; business files (window scope) span every partition and do not.
    """

    cycles: ClearingCycles | None = None
    parties: Mapping[str, str] = field(default_factory=dict)

    def context(self, key: FileKey, part: int, record_count: int) -> dict[str, Any]:
        cycles = self.cycles or ClearingCycles(key.window_end_ms - key.window_start_ms)
        business_date, sequence = cycles.business_day(key.window_start_ms)
        context: dict[str, Any] = {
            "window_start": _utc(key.window_start_ms),
            "window_end": _utc(key.window_end_ms),
            "business_date": business_date,
            "file_sequence": sequence,
            "part": part,
            "group": dict(key.group),
            "file_key": key.id,
            "record_count": record_count,
            **self.parties,
        }
        if key.per_partition:
            context["topic"] = key.topic
            context["partition"] = key.partition
        return context


DEFAULT_VARIABLES = FileVariables()
