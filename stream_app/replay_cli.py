"""``stream-app replay``: regenerate or audit files from a bounded range of the input topics."""

from __future__ import annotations

import logging
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from stream_app.config import AppSettings
from stream_app.core.records import RawRecord
from stream_app.ops.gc import tune_for_throughput
from stream_app.ops.security import confluent_security
from stream_app.pipeline import MemoryStateStore
from stream_app.replay import (
    BEGINNING,
    CountingPublisher,
    LoopbackSender,
    PartitionRange,
    RangeReader,
    ReplayError,
    VerifyingSink,
    recorded_cuts,
    run_records,
    run_window_records,
)
from stream_app.sinks.base import Sink
from stream_app.sinks.local import LocalSink
from stream_app.wiring import build_pipeline, build_routing, build_sink

log = logging.getLogger(__name__)


@dataclass
class ReplayRequest:
    partitions: list[int] | None = None
    from_offsets: dict[int, int] = field(default_factory=dict)
    to_offsets: dict[int, int] = field(default_factory=dict)  # exclusive
    from_time_ms: int | None = None
    to_time_ms: int | None = None
    window_start_ms: int | None = None  # replay the recorded parts of one window
    out_dir: Path | None = None
    verify: bool = False


@dataclass
class ReplayReport:
    files: list[str]
    records: int
    dead_letters: dict[str, int]
    problems: list[str]
    seconds: float


def parse_time(text: str) -> int:
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp() * 1000)


def parse_offsets(values: Iterable[str], option: str) -> dict[int, int]:
    offsets = {}
    for value in values:
        partition, sep, offset = value.partition("=")
        if not sep or not partition.isdigit() or not offset.isdigit():
            raise ReplayError(f"{option} takes PARTITION=OFFSET, got {value!r}")
        offsets[int(partition)] = int(offset)
    return offsets


class Progress:
    """A progress bar on a terminal; a log line every few seconds otherwise."""

    def __init__(self, total: int | None) -> None:
        self._total = total
        self._count = 0
        self._bytes = 0
        self._started = time.monotonic()
        self._last_log = self._started
        self._bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit="rec", unit_scale=True, dynamic_ncols=True)

    def update(self, batch: list[RawRecord]) -> None:
        self._count += len(batch)
        self._bytes += sum(len(r.value or b"") for r in batch)
        if self._bar is not None:
            self._bar.update(len(batch))
            self._bar.set_postfix_str(f"{self._bytes / 1e6:.1f} MB")
            return
        now = time.monotonic()
        if now - self._last_log >= 5:
            rate = self._count / (now - self._started)
            if self._total:
                eta = (self._total - self._count) / rate if rate else 0
                log.info("replayed %d/%d records (%.0f rec/s, %.1f MB, ETA %.0f s)", self._count, self._total,
                         rate, self._bytes / 1e6, eta)
            else:
                log.info("replayed %d records (%.0f rec/s, %.1f MB)", self._count, rate, self._bytes / 1e6)
            self._last_log = now

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _ranges(settings: AppSettings, reader: RangeReader, request: ReplayRequest) -> list[PartitionRange]:
    ranges = []
    for topic in settings.kafka.inputTopics:
        for partition in request.partitions or reader.partitions(topic):
            start: int | None = request.from_offsets.get(partition, BEGINNING)
            end: int | None = request.to_offsets.get(partition)
            if request.from_time_ms is not None:
                start = reader.offset_for_time(topic, partition, request.from_time_ms)
                if start is None:
                    continue  # nothing at or after the start time
            if request.to_time_ms is not None:
                end = reader.offset_for_time(topic, partition, request.to_time_ms)
            assert start is not None
            ranges.append(PartitionRange(topic, partition, start, end))
    return ranges


def run_replay(settings: AppSettings, request: ReplayRequest) -> ReplayReport:
    tune_for_throughput()
    started = time.monotonic()
    target: Sink
    if request.out_dir is not None:
        request.out_dir.mkdir(parents=True, exist_ok=True)
        target = LocalSink(request.out_dir, settings.sink.file_mode_bits if settings.sink.type == "local" else 0o640,
                           manifest=settings.sink.manifest)
    else:
        target = build_sink(settings)
    sink: Sink = VerifyingSink(target) if request.verify else target
    publisher = CountingPublisher()
    spool = Path(tempfile.mkdtemp(prefix="stream-app-replay-")) if settings.worker.streamingAppendEnabled else None
    pipeline = build_pipeline(settings, MemoryStateStore(), publisher, sink=sink, spool_dir=spool)
    reader = RangeReader(_consumer_config(settings))
    files: list[str] = []
    records = 0
    try:
        if request.window_start_ms is not None:
            # the recorded parts live in the configured sink's manifest, wherever the output goes
            recorded = target if request.out_dir is None else build_sink(settings)
            entries = [e for e in recorded.manifest_entries(request.window_start_ms)
                       if request.partitions is None or e["partition"] in request.partitions
                       or e.get("scope") == "window"]
            if not entries:
                raise ReplayError("no recorded parts for that window in the manifest; replay an offset or time "
                                  "range instead")
            for cut in recorded_cuts(entries, reader, pipeline.prepare):
                outcome = pipeline.write_cut(cut)
                if outcome.result is None:
                    raise ReplayError(f"{outcome.name or cut.key.id}: {outcome.error_message}")
                files.append(outcome.result.name)
                records += cut.count
        else:
            ranges = _ranges(settings, reader, request)
            sizes = [r.size for r in ranges]
            progress = Progress(None if None in sizes else sum(s for s in sizes if s is not None))

            def raws() -> Iterator[RawRecord]:
                for batch in reader.read(ranges):
                    progress.update(batch)
                    yield from batch

            try:
                if settings.worker.fileScope == "window":
                    # Both stages in this process, without the repartition topic; a window waits
                    # for (and closes with) the replayed input partitions only.
                    sources = tuple(sorted({(r.topic, r.partition) for r in ranges}))
                    pipeline = build_pipeline(settings, MemoryStateStore(), publisher, sink=sink, spool_dir=spool,
                                              sources=sources)
                    sender = LoopbackSender(settings.repartition_topic)
                    routing = build_routing(settings, MemoryStateStore(), publisher, sender)
                    summary = run_window_records(routing, pipeline, sender, sources, raws())
                else:
                    summary = run_records(pipeline, raws())
            finally:
                progress.close()
            files, records = summary.names, summary.records
            failed = pipeline.pending_cuts()
            if failed:
                raise ReplayError(f"{len(failed)} file(s) could not be written; see the log")
    finally:
        reader.close()
    problems = sink.problems if isinstance(sink, VerifyingSink) else []
    return ReplayReport(files, records, publisher.dead_letters, problems, time.monotonic() - started)


def _consumer_config(settings: AppSettings) -> dict:
    return {"bootstrap.servers": settings.kafka.bootstrapServers, **confluent_security(settings.kafka.security)}
