"""Reading bounded ranges of the input topics for replay, and rebuilding recorded parts.

* ``RangeReader`` reads assigned partitions in batches with confluent-kafka: no consumer-group
  membership and no commits, so a replay never disturbs the live group;
* ``recorded_cuts`` rebuilds parts exactly from the offset ranges the manifest recorded for
  them (a replay of a window), which reproduces files even when their records arrived late,
  interleaved, or were cut by the wall clock.
"""

from __future__ import annotations

import queue
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from stream_app.core.records import RawRecord, SourceRecord
from stream_app.core.routing import file_order
from stream_app.core.windows import FileCut, FileKey
from stream_app.ops.problems import topic_partitions


class ReplayError(Exception):
    """The input cannot give what the replay was asked for (exit 65)."""


class RangeRequestError(ReplayError):
    """The requested range itself is wrong: a partition or offset that does not exist (exit 64)."""


BEGINNING = -2  # confluent-kafka's OFFSET_BEGINNING
READ_AHEAD = 2  # batches a reader holds ready beyond the one being processed


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

    def offset_at(self, topic: str, partition: int, timestamp_ms: int, timeout_s: float = 10.0) -> int | None:
        """The first offset whose record timestamp is at or after ``timestamp_ms``; None when there
        is none (every record is older: the range ends at the log end)."""
        from confluent_kafka import TopicPartition

        (found,) = self._consumer.offsets_for_times([TopicPartition(topic, partition, timestamp_ms)], timeout_s)
        return found.offset if found.offset >= 0 else None

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
        """The ranges' records in batches, read ahead by a thread: while the caller processes a
        batch, the thread waits on the broker and builds the next ones (``READ_AHEAD`` at most),
        which a profile of replay found the main thread doing for a quarter of its time."""
        batches: queue.Queue[list[RawRecord] | BaseException | None] = queue.Queue(maxsize=READ_AHEAD)
        stop = threading.Event()

        def put(item: list[RawRecord] | BaseException | None) -> bool:
            while not stop.is_set():
                try:
                    batches.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def read_ahead() -> None:
            try:
                for batch in self._batches(ranges):
                    if not put(batch):
                        return
                put(None)
            except BaseException as exc:  # handed to the caller's thread, raised there
                put(exc)

        # The consumer is used by this thread alone until it ends: the caller waits for it below.
        reader = threading.Thread(target=read_ahead, name="replay-read-ahead", daemon=True)
        reader.start()
        try:
            while (item := batches.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            reader.join()

    def _batches(self, ranges: list[PartitionRange]) -> Iterator[list[RawRecord]]:
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
