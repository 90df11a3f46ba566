"""Writing one part: assemble → compress → sink (atomic) → manifest line.

Stateless and thread-safe (it touches only the assembler and the sink), so the live driver runs
it in a thread while the event loop goes on; what the outcome means for the part's state is the
file stage's business (``FilePipeline.record_outcome``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from stream_app.core.assembly import Assembler, PartWriter
from stream_app.core.compression import gzipped
from stream_app.core.template import AssemblyError
from stream_app.core.windows import FileCut
from stream_app.sinks.base import FileStore, SinkError, WriteResult


@dataclass(slots=True)
class WriteOutcome:
    seconds: float = 0.0
    name: str | None = None
    result: WriteResult | None = None
    error_class: str | None = None
    error_message: str | None = None
    assembly_failed: bool = False
    source: tuple[str, int, int] | None = None
    transient: bool = True


class FileWriter:
    def __init__(self, assembler: Assembler, sink: FileStore, mode: str,
                 compression: str, schema_ref: str | None, max_file_bytes: int | None = None) -> None:
        self._assembler = assembler
        self.sink = sink
        self._mode = mode
        self._compression = compression
        self._schema_ref = schema_ref
        self._max_file_bytes = max_file_bytes

    def write(self, cut: FileCut, writer: PartWriter | None, confirm_owner: Callable[[str], None] | None) -> WriteOutcome:
        """``writer``: the part's streamed writer (None: assemble the cut's records); ``confirm_owner``
        runs just before the file is put in place (it raises once the partition is lost)."""
        if writer is None and len(cut.records) < cut.count:
            # A streamed cut holds no records: they are only in the part's spool, and that is gone
            # because the partition was revoked meanwhile.  Assembling the cut would write a wrong
            # file under the part's name; its new owner writes the real one.  (A cut that carries
            # its records, e.g. one rebuilt by a replay of a window, is assembled as usual.)
            return WriteOutcome(error_class="PARTITION_REVOKED", error_message="the partition was revoked")
        try:
            assembled = writer.finish() if writer is not None else self._assembler.assemble(cut)
        except AssemblyError as exc:
            return WriteOutcome(error_class=exc.error_class, error_message=str(exc), assembly_failed=True,
                                source=exc.source)
        chunks = gzipped(assembled.chunks) if self._compression == "gzip" else assembled.chunks
        if self._max_file_bytes is not None:
            size = sum(len(chunk) for chunk in chunks())
            if size > self._max_file_bytes:
                # the header and trailer took more than worker.frameReserveBytes: never a larger file
                return WriteOutcome(name=assembled.name, error_class="FILE_TOO_LARGE", assembly_failed=True,
                                    error_message=f"{assembled.name} would be {size} bytes, over worker.maxBytesPerFile "
                                                  f"({self._max_file_bytes}); raise worker.frameReserveBytes")
        try:
            result = self.sink.write(assembled.name, chunks, None if confirm_owner is None else
                                     partial(confirm_owner, assembled.name))
        except SinkError as exc:
            return WriteOutcome(name=assembled.name, error_class=exc.error_class, error_message=str(exc),
                                transient=exc.transient)
        try:
            self.sink.record_manifest(assembled.name, self.manifest_entry(cut, result))
        except SinkError as exc:
            return WriteOutcome(name=assembled.name, error_class=exc.error_class, error_message=str(exc))
        return WriteOutcome(name=assembled.name, result=result)

    def manifest_entry(self, cut: FileCut, result: WriteResult) -> dict:
        return {
            "name": result.name,
            "records": cut.count,
            "bytes": result.bytes,
            "sha256": result.sha256,
            "file_key": cut.key.id,
            "scope": "partition" if cut.key.per_partition else "window",
            "topic": cut.key.topic,
            "partition": cut.key.partition,
            "group": [list(pair) for pair in cut.key.group],
            "window_start": cut.key.window_start_ms,
            "window_end": cut.key.window_end_ms,
            "part": cut.part,
            "reason": cut.reason,
            "mode": self._mode,
            "schema": self._schema_ref,
            "compression": self._compression,
            "offsets": [
                {"topic": topic, "partition": partition, "ranges": [list(r) for r in ranges]}
                for (topic, partition), ranges in cut.source_ranges().items()
            ],
        }

