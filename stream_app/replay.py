"""Replay: the same core as the live worker, driven over a bounded range, without Faust.

* ``run_records`` processes a complete, bounded sequence of raw records and closes every window
  at the end of the input (a replay of an offset or time range);
* ``recorded_cuts`` rebuilds parts exactly from the offset ranges the manifest recorded for
  them (a replay of a window), which reproduces files even when their records arrived late,
  interleaved, or were cut by the wall clock;
* ``RangeReader`` reads assigned partitions in batches with confluent-kafka: no consumer-group
  membership and no commits, so a replay never disturbs the live group.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from stream_app.core.records import RawRecord, SourceRecord
from stream_app.core.routing import file_order
from stream_app.core.windows import FileCut, FileKey
from stream_app.ops.problems import topic_partitions
from stream_app.pipeline import FilePipeline, FlushSummary
from stream_app.routing_stage import RoutingStage
from stream_app.sinks.base import Sink, WriteResult

END_OF_INPUT_MS = 2**62  # a wall-clock "now" after every window end: closes everything


def flush_due(pipeline: FilePipeline, now_wall_ms: int) -> FlushSummary:
    summary = FlushSummary()
    cuts = pipeline.due_cuts(now_wall_ms)
    for cut in cuts:
        if pipeline.ready_to_write(cut):  # not when an earlier part failed in this loop
            pipeline.apply_write(cut, pipeline.write_cut(cut), now_wall_ms, summary)
    if cuts:
        pipeline.finish_flush(summary)
    pipeline.advance_checkpoints()
    pipeline.confirm_checkpoints()  # the in-memory state is durable for as long as replay runs
    return summary


def run_records(pipeline: FilePipeline, raws: Iterable[RawRecord], batch_size: int = 10_000) -> FlushSummary:
    total = FlushSummary()

    add = total.add
    batch: list[RawRecord] = []
    for raw in raws:
        batch.append(raw)
        if len(batch) >= batch_size:
            pipeline.process(batch, 0)
            add(flush_due(pipeline, 0))
            batch = []
    pipeline.process(batch, 0)
    add(flush_due(pipeline, 0))
    pipeline.tick(END_OF_INPUT_MS)
    add(flush_due(pipeline, END_OF_INPUT_MS))
    return total


class LoopbackSender:
    """Both stages in one process: the file stage reads what the routing stage sends, in order,
    without a repartition topic (the bytes do not depend on where the records travel)."""

    def __init__(self, topic: str) -> None:
        self._topic = topic
        self._next: dict[int, int] = {}
        self._queued: list[RawRecord] = []

    def send(self, partition: int, key: bytes, value: bytes) -> None:
        offset = self._next.get(partition, 0)
        self._next[partition] = offset + 1
        self._queued.append(RawRecord(self._topic, partition, offset, None, key, value))

    def drain(self) -> list[RawRecord]:
        queued, self._queued = self._queued, []
        return queued


def run_window_records(routing: RoutingStage, files: FilePipeline, sender: LoopbackSender,
                       sources: Iterable[tuple[str, int]], raws: Iterable[RawRecord],
                       batch_size: int = 10_000) -> FlushSummary:
    """Business files over a bounded input: route, collect, and close every window at the end."""
    total = FlushSummary()

    def step(batch: list[RawRecord], now_wall_ms: int) -> None:
        routing.process(batch, now_wall_ms)
        files.process_routed(sender.drain(), now_wall_ms)
        total.add(flush_due(files, now_wall_ms))
        routing.advance_checkpoints()
        routing.confirm_checkpoints()

    routing.assign(sources, 0)
    batch: list[RawRecord] = []
    for raw in raws:
        batch.append(raw)
        if len(batch) >= batch_size:
            step(batch, 0)
            batch = []
    step(batch, 0)
    closed = routing.close_idle(END_OF_INPUT_MS, lambda tp: True)
    routing.advance_checkpoints()
    routing.confirm_checkpoints()
    routing.announce(closed)
    step([], END_OF_INPUT_MS)
    return total


# -- replay from Kafka ------------------------------------------------------------------------

BEGINNING = -2  # confluent-kafka's OFFSET_BEGINNING


@dataclass(frozen=True)
class PartitionRange:
    """Offsets ``[start, end)`` of one input partition; ``end`` None reads to the end of the log
    (as the broker reports it on reaching it: reported high watermarks can lag, EOF does not)."""

    topic: str
    partition: int
    start: int
    end: int | None

    @property
    def size(self) -> int | None:
        return None if self.end is None or self.start < 0 else max(0, self.end - self.start)


class RangeReader:
    """Reads offset ranges on assigned partitions: no group membership, never a commit.

    Batches come from confluent-kafka's ``consume``; the embedded broker's high watermark can lag
    what is readable, so the reader stops on what it has read, not on what it was told.
    """

    def __init__(self, consumer_config: dict[str, Any], batch_size: int = 10_000) -> None:
        from confluent_kafka import Consumer

        self._consumer = Consumer({
            **consumer_config, "group.id": f"stream-app-replay-{uuid.uuid4().hex}", "enable.auto.commit": False,
            "enable.auto.offset.store": False, "enable.partition.eof": True, "auto.offset.reset": "earliest",
        })
        self._batch = batch_size

    def close(self) -> None:
        self._consumer.close()

    def partitions(self, topic: str) -> list[int]:
        return topic_partitions(self._consumer, topic)

    def log_end(self, topic: str, partition: int, at_least: int) -> int:
        """The partition's next offset, confirmed by reading when the listed one is below
        ``at_least`` (a broker can list a stale end; it never lists one beyond the log)."""
        from confluent_kafka import TopicPartition

        _, listed = self._consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=15)
        if listed >= at_least:
            return int(listed)
        return self.log_ends({(topic, partition): max(int(listed), 0)})[(topic, partition)]

    def total(self, ranges: list[PartitionRange]) -> int | None:
        """Records in the ranges, open ends as the broker lists them (for a progress total)."""
        from confluent_kafka import TopicPartition

        total = 0
        try:
            for r in ranges:
                low, high = self._consumer.get_watermark_offsets(TopicPartition(r.topic, r.partition), timeout=10)
                start = low if r.start < 0 else r.start
                total += max(0, (high if r.end is None else r.end) - start)
        except Exception:  # no total, still a progress line
            return None
        return total

    def log_ends(self, starts: dict[tuple[str, int], int]) -> dict[tuple[str, int], int]:
        """The real end offset of each partition, reading on from ``starts`` to end-of-partition.

        For brokers whose listed end offsets can be stale (the embedded one): on Kafka the listed
        end is right and this is one empty fetch per partition.
        """
        ends = {tp: max(start, 0) for tp, start in starts.items()}
        ranges = [PartitionRange(topic, partition, ends[(topic, partition)], None) for topic, partition in starts]
        for batch in self.read(ranges):
            for raw in batch:
                ends[(raw.topic, raw.partition)] = max(ends[(raw.topic, raw.partition)], raw.offset + 1)
        return ends

    def read(self, ranges: list[PartitionRange]) -> Iterator[list[RawRecord]]:
        from confluent_kafka import KafkaError, TopicPartition

        todo = {(r.topic, r.partition): r for r in ranges if r.size != 0}
        if not todo:
            return
        self._consumer.assign([TopicPartition(r.topic, r.partition, r.start) for r in todo.values()])
        idle = 0
        while todo:
            messages = self._consumer.consume(self._batch, timeout=1.0)
            batch: list[RawRecord] = []
            for msg in messages:
                topic, partition, offset = msg.topic() or "", msg.partition() or 0, msg.offset() or 0
                tp = (topic, partition)
                rng = todo.get(tp)
                if rng is None:
                    continue
                error = msg.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF and (rng.end is None or offset >= rng.end):
                        del todo[tp]
                    continue
                if rng.end is None or offset < rng.end:
                    ts_type, ts = msg.timestamp()
                    headers: tuple = tuple(msg.headers() or ())  # confluent-kafka: a list of (str, bytes)
                    batch.append(RawRecord(topic, partition, offset, ts if ts_type else None,
                                           msg.key(), msg.value(), headers))
                if rng.end is not None and offset + 1 >= rng.end:
                    del todo[tp]
            if batch:
                idle = 0
                yield batch
            else:
                idle += 1
                if idle >= 10:  # nothing more to read although the range says so: stop, report
                    raise ReplayError(f"no more records after 10 s; unread ranges: {sorted(todo)}")


class ReplayError(Exception):
    """The input cannot give what the replay was asked for (exit 65)."""


class RangeRequestError(ReplayError):
    """The requested range itself is wrong: a partition or offset that does not exist (exit 64)."""


class CountingPublisher:
    """Replay publishes nothing: journal events are dropped, dead letters are counted by reason."""

    def __init__(self) -> None:
        self.dead_letters: dict[str, int] = {}

    def journal(self, event: dict, partition_key: str) -> None:
        return None

    def dead_letter(self, raw: RawRecord, reason: str, detail: str) -> None:
        self.dead_letters[reason] = self.dead_letters.get(reason, 0) + 1


# Manifest fields replay must reproduce (the cut reason of a wall-clock cut may differ, and
# "partial" marks a replay's own output).
AUDITED_FIELDS = ("records", "bytes", "sha256", "file_key", "scope", "topic", "partition", "group", "window_start",
                  "window_end", "part", "schema", "compression", "offsets")


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

    def __init__(self, target: Sink) -> None:
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


def _short(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 80 else text[:77] + "..."


def recorded_window(entry: dict) -> tuple:
    """The file window a manifest entry belongs to (its parts share it)."""
    return (entry["topic"] or "", -1 if entry["partition"] is None else entry["partition"], entry["window_start"],
            entry["window_end"], tuple((str(n), str(v)) for n, v in entry["group"]))


def recorded_cuts(entries: list[dict], reader: RangeReader, decode: Any) -> Iterator[FileCut]:
    """Rebuild each recorded part exactly from the offset ranges its manifest entry lists (per
    source partition; a business file's records in file order): the cuts the live run made,
    whatever decided them (count, watermark, idle, interval, pressure).  One read of each
    source partition's span per window, so memory holds one window's records."""
    windows: dict[tuple, list[dict]] = {}
    for entry in entries:
        windows.setdefault(recorded_window(entry), []).append(entry)
    for window in sorted(windows):
        # one entry per part: a second line for a part (a copied or edited manifest) names no
        # file replay produces, so verify reports it (UNPRODUCED)
        by_part: dict[int, dict] = {}
        for entry in sorted(windows[window], key=lambda e: (e["part"], e["name"])):
            by_part.setdefault(entry["part"], entry)
        parts = [by_part[part] for part in sorted(by_part)]
        owner: dict[tuple[str, int], dict[int, int]] = {}  # source -> offset -> index in parts
        for index, entry in enumerate(parts):
            for source in entry["offsets"]:
                offsets = owner.setdefault((source["topic"], source["partition"]), {})
                for first, last in source["ranges"]:
                    offsets.update(dict.fromkeys(range(int(first), int(last) + 1), index))
        found: list[list[SourceRecord]] = [[] for _ in parts]
        spans = [PartitionRange(topic, partition, min(offsets), max(offsets) + 1)
                 for (topic, partition), offsets in sorted(owner.items())]
        for batch in reader.read(spans):
            for raw in batch:
                slot = owner[(raw.topic, raw.partition)].get(raw.offset)
                if slot is not None:
                    found[slot].append(decode(raw))
        for entry, records in zip(parts, found):
            wanted = sum(int(last) - int(first) + 1 for source in entry["offsets"] for first, last in source["ranges"])
            if len(records) != wanted:
                raise ReplayError(f"{entry['name']}: {wanted - len(records)} recorded offsets are no longer readable")
            key = FileKey(entry["topic"], entry["partition"], entry["window_start"], entry["window_end"], window[4])
            if not key.per_partition:
                records.sort(key=file_order)
            yield FileCut.of(key, entry["part"], records, entry["reason"], False)
