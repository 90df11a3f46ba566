"""``stream-app replay``: regenerate or audit files from a bounded range of the input topics."""

from __future__ import annotations

import logging
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from stream_app.config import AppSettings
from stream_app.core.records import RawRecord
from stream_app.ops.gc import tune_for_throughput
from stream_app.ops.security import confluent_security
from stream_app.pipeline.files import FlushSummary
from stream_app.pipeline.memory import MemoryStateStore
from stream_app.pipeline.wiring import build_pipeline, build_routing, build_sink, window_policy
from stream_app.replay.reader import (
    BEGINNING,
    PartitionRange,
    RangeReader,
    RangeRequestError,
    ReplayError,
    recorded_cuts,
)
from stream_app.replay.run import CountingPublisher, LoopbackSender, run_records, run_window_records
from stream_app.replay.verify import VerifyingSink
from stream_app.sinks.base import FileStore, SinkError
from stream_app.sinks.local import LocalSink

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
    allow_partial: bool = False  # write files a range holds only part of, as PARTIAL_<name>


@dataclass
class ReplayReport:
    files: list[str]
    records: int
    dead_letters: dict[str, int]
    problems: list[str]
    seconds: float
    partial: list[str] = field(default_factory=list)  # files written as PARTIAL_<name>


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
            raise ValueError(f"{option} takes PARTITION=OFFSET, got {value!r}")
        offsets[int(partition)] = int(offset)
    return offsets


class Progress:
    """Records read of the total, files written and the ETA: a tqdm bar on a terminal, a log
    line every few seconds otherwise."""

    def __init__(self, total: int | None) -> None:
        self._total = total
        self._count = 0
        self._bytes = 0
        self._files = 0
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
            self._show()
            return
        now = time.monotonic()
        if now - self._last_log >= 5:
            rate = self._count / (now - self._started)
            if self._total:
                eta = (self._total - self._count) / rate if rate else 0
                log.info("replayed %d/%d records (%.0f rec/s, %.1f MB, %d files written, ETA %.0f s)", self._count,
                         self._total, rate, self._bytes / 1e6, self._files, eta)
            else:
                log.info("replayed %d records (%.0f rec/s, %.1f MB, %d files written)", self._count, rate,
                         self._bytes / 1e6, self._files)
            self._last_log = now

    def written(self, summary: FlushSummary) -> None:
        """A commit round's files (replay's driver reports every round)."""
        if summary.files:
            self._files += summary.files
            if self._bar is not None:
                self._show()

    def _show(self) -> None:
        assert self._bar is not None
        self._bar.set_postfix_str(f"{self._files} files, {self._bytes / 1e6:.1f} MB")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _ranges(settings: AppSettings, reader: RangeReader, request: ReplayRequest) -> list[PartitionRange]:
    """The offset ranges to read; an offset past the end of its partition is an error at once."""
    ranges = []
    for topic in settings.kafka.inputTopics:
        known = reader.partitions(topic)
        for partition in request.partitions or known:
            if partition not in known:
                raise RangeRequestError(f"{topic} has no partition {partition} (it has {len(known)})")
            start = request.from_offsets.get(partition, BEGINNING)
            end = request.to_offsets.get(partition)
            bounds = [(flag, offset) for flag, offset in (("--from-offset", start), ("--to-offset", end))
                      if offset is not None and offset > 0]
            if bounds:
                log_end = reader.log_end(topic, partition, max(offset for _, offset in bounds))
                for flag, offset in bounds:
                    if offset > log_end:
                        raise RangeRequestError(f"{flag} {partition}={offset} is past the end of {topic}/{partition} "
                                          f"(its next offset is {log_end})")
            if end is not None and start != BEGINNING and end < start:
                raise RangeRequestError(f"--to-offset {partition}={end} is before --from-offset {partition}={start}")
            ranges.append(PartitionRange(topic, partition, start, end))
    return ranges


def _bounded(settings: AppSettings, request: ReplayRequest) -> bool:
    """True when the range may hold only part of some window (so part of some file)."""
    return (any(offset > 0 for offset in request.from_offsets.values()) or bool(request.to_offsets)
            or (settings.worker.fileScope == "window" and request.partitions is not None))


def _whole(request: ReplayRequest) -> bool:
    """No range, window or partition selected: every file."""
    return (request.from_time_ms is None and request.to_time_ms is None and request.window_start_ms is None
            and request.partitions is None and not request.from_offsets and not request.to_offsets)


def _in_time_range(request: ReplayRequest, window_start_ms: int) -> bool:
    return ((request.from_time_ms is None or window_start_ms >= request.from_time_ms)
            and (request.to_time_ms is None or window_start_ms < request.to_time_ms))


def _file_chunks(path: Path) -> Callable[[], Iterator[bytes]]:
    def chunks() -> Iterator[bytes]:
        with open(path, "rb") as fh:
            while block := fh.read(1 << 20):
                yield block
    return chunks


def run_replay(settings: AppSettings, request: ReplayRequest) -> ReplayReport:
    """``--window`` and ``--from-time/--to-time`` rebuild file windows exactly (from the manifest's
    offset ranges, or by scanning the partitions for windows it does not record); an offset range
    runs the windowing over that range, and a file it holds only part of is never passed off under
    a live file's name."""
    tune_for_throughput()
    started = time.monotonic()
    timed = request.from_time_ms is not None or request.to_time_ms is not None
    if timed and (request.from_offsets or request.to_offsets or request.window_start_ms is not None):
        raise RangeRequestError("--from-time/--to-time select file windows; they do not combine with offsets or --window")
    target: FileStore
    if request.out_dir is not None:
        request.out_dir.mkdir(parents=True, exist_ok=True)
        target = LocalSink(request.out_dir, settings.sink.file_mode_bits if settings.sink.type == "local" else 0o640,
                           manifest=settings.sink.manifest)
    else:
        target = build_sink(settings)
    sink: FileStore = VerifyingSink(target) if request.verify else target
    # the recorded parts live in the configured sink's manifest, wherever the output goes
    recorded = target if request.out_dir is None else build_sink(settings)
    publisher = CountingPublisher()
    spool = Path(tempfile.mkdtemp(prefix="stream-app-replay-")) if settings.worker.streamingAppendEnabled else None
    reader = RangeReader(_consumer_config(settings))
    whole = _whole(request)
    problems: list[str] = []
    try:
        entries: list[dict] = []
        if request.window_start_ms is not None:
            entries = recorded.manifest_entries(request.window_start_ms)
            if not entries:
                raise ReplayError("no recorded parts for that window in the manifest; replay a time range (which "
                                  "scans for it) or an offset range instead")
        elif timed:
            entries = [e for e in recorded.manifest_entries() if _in_time_range(request, e["window_start"])]
        elif whole:
            # Every recorded window from the ranges its manifest lines record: the cuts the live
            # run made, whatever decided them; then the windows the manifest does not record
            # (written after it was lost, or not closed yet) from a scan of the whole range.
            entries = recorded.manifest_entries()
        entries = [e for e in entries if request.partitions is None or e["partition"] in request.partitions
                   or e.get("scope") == "window"]
        files: list[str] = []
        records = 0
        partial: list[str] = []
        if entries:
            problems.extend(_inconsistent_windows(settings, entries))
            pipeline = build_pipeline(settings, MemoryStateStore(), publisher, sink=sink, spool_dir=spool)
            for cut in recorded_cuts(entries, reader, pipeline.prepare):
                outcome = pipeline.write_cut(cut)
                if outcome.result is None:
                    raise ReplayError(f"{outcome.name or cut.key.id}: {outcome.error_message}")
                files.append(outcome.result.name)
                records += cut.count
        if not entries or whole:
            # by name: a window's parts may be recorded in several replicas' manifests (each
            # volume has its own), so one manifest can record some of a window's parts only
            skip = {e["name"] for e in entries}
            scanned, scanned_records, partial = _replay_range(settings, request, reader, publisher, sink, recorded,
                                                              spool, skip)
            files += scanned
            records += scanned_records
    finally:
        reader.close()
    if isinstance(sink, VerifyingSink):
        sink.finish(whole)
        problems.extend(sink.problems)
    return ReplayReport(files, records, publisher.dead_letters, problems, time.monotonic() - started, partial)


def _inconsistent_windows(settings: AppSettings, entries: list[dict]) -> list[str]:
    """Manifest lines whose window is not one the configured windows give (an edited line)."""
    policy = window_policy(settings)
    found = []
    for entry in entries:
        start, end = entry["window_start"], entry["window_end"]
        if policy.start_of(start) != start:
            found.append(f"MANIFEST    {entry['name']}: window_start is {start} in the manifest, not the start "
                         f"of a file window ({policy.start_of(start)})")
        elif policy.end_of(start) != end:
            found.append(f"MANIFEST    {entry['name']}: window_end is {end} in the manifest, the window of "
                         f"{start} ends at {policy.end_of(start)}")
    return found


def _replay_range(settings: AppSettings, request: ReplayRequest, reader: RangeReader, publisher: CountingPublisher,
                  sink: FileStore, recorded: FileStore, spool: Path | None,
                  skip: set[str] | frozenset[str] = frozenset()) -> tuple[list[str], int, list[str]]:
    """Window the range into a scratch directory, then publish what the request selects: with a
    time range the windows starting in it; from a bounded offset range a file under its live
    name only when the live file is identical (else it holds part of its window: refused, or
    PARTIAL_<name> with --allow-partial and --out); never the files named in ``skip`` (rebuilt
    from the manifest already)."""
    ranges = _ranges(settings, reader, request)
    progress = Progress(reader.total(ranges))
    scratch_dir = Path(tempfile.mkdtemp(prefix="stream-app-replay-files-"))
    scratch = LocalSink(scratch_dir, 0o600, manifest=True)

    def raws() -> Iterator[RawRecord]:
        for batch in reader.read(ranges):
            progress.update(batch)
            yield from batch

    try:
        try:
            if settings.worker.fileScope == "window":
                # Both stages in this process, without the repartition topic; a window waits
                # for (and closes with) the replayed input partitions only.
                sources = tuple(sorted({(r.topic, r.partition) for r in ranges}))
                pipeline = build_pipeline(settings, MemoryStateStore(), publisher, sink=scratch, spool_dir=spool,
                                          sources=sources)
                sender = LoopbackSender(settings.repartition_topic, hands_over=spool is None)
                routing = build_routing(settings, MemoryStateStore(), publisher, sender)
                run_window_records(routing, pipeline, sender, sources, raws(), on_round=progress.written)
            else:
                pipeline = build_pipeline(settings, MemoryStateStore(), publisher, sink=scratch, spool_dir=spool)
                run_records(pipeline, raws(), on_round=progress.written)
        finally:
            progress.close()
        if pipeline.pending_cuts():
            raise ReplayError(f"{len(pipeline.pending_cuts())} file(s) could not be written; see the log")
        produced = [e for e in scratch.manifest_entries() if e["name"] not in skip]
        timed = request.from_time_ms is not None or request.to_time_ms is not None
        if timed:
            produced = [e for e in produced if _in_time_range(request, e["window_start"])]
            if not produced:
                raise ReplayError("no file window starts in the time range (by event time); nothing written")
        live = {e["name"]: e["sha256"] for e in recorded.manifest_entries()} if _bounded(settings, request) else None
        partial = [e for e in produced if live is not None and live.get(e["name"]) != e["sha256"]]
        if partial and not (request.allow_partial and request.out_dir is not None and not request.verify):
            names = ", ".join(e["name"] for e in partial[:5]) + (" ..." if len(partial) > 5 else "")
            raise ReplayError(f"the range holds only part of the window of {len(partial)} file(s) ({names}); "
                              "rebuild whole windows with --window or --from-time/--to-time, or write them as "
                              "PARTIAL_<name> with --out DIR --allow-partial")
        partial_names = {e["name"] for e in partial}
        files: list[str] = []
        for entry in produced:
            name = f"PARTIAL_{entry['name']}" if entry["name"] in partial_names else entry["name"]
            try:
                result = sink.write(name, _file_chunks(scratch_dir / entry["name"]))
                sink.record_manifest(name, {**entry, "name": name, **({"partial": True} if name != entry["name"] else {})})
            except SinkError as exc:  # replay does not retry: the operator sees why at once
                raise ReplayError(f"{name}: {exc} ({exc.error_class})") from None
            files.append(result.name)
        return files, sum(e["records"] for e in produced), [f"PARTIAL_{n}" for n in sorted(partial_names)]
    finally:
        shutil.rmtree(scratch_dir, ignore_errors=True)


def _consumer_config(settings: AppSettings) -> dict:
    kafka = settings.kafka
    # The live worker's fetch size and wait, so one setting tunes both readers (measured: no
    # change in replay's rate against librdkafka's 1 MiB and 500 ms; the read-ahead thread was it).
    return {"bootstrap.servers": kafka.bootstrapServers, "max.partition.fetch.bytes": kafka.maxPartitionFetchBytes,
            "fetch.wait.max.ms": kafka.fetchMaxWaitMs, **confluent_security(kafka.security)}
