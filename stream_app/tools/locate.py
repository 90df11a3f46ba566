"""``stream-app locate``: the file that holds a record, or why none does.

Built on what the worker already keeps, with no index of its own: the manifest lists each
file's offset ranges per input partition, so a record's file is the manifest line whose ranges
hold its offset; its position in the file comes from one bounded read of that part's ranges,
put in file order as the worker did.  A record in no file is looked up among the dead letters
(their envelopes carry the source coordinates); otherwise it waits in an open window.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from stream_app.codecs import DecodeError
from stream_app.config import AppSettings
from stream_app.core.routing import file_order
from stream_app.ops.security import confluent_security
from stream_app.pipeline.wiring import build_decoder, build_sink, load_worker_pack
from stream_app.replay.reader import PartitionRange, RangeReader
from stream_app.tools.deliveries import DeliveryStatus, read_statuses

Coordinates = tuple[str, int, int]  # topic, partition, offset


def parse_offset(text: str) -> Coordinates:
    topic, _, rest = text.rpartition(":")
    topic, _, partition = topic.rpartition(":")
    if not topic or not partition.isdigit() or not rest.isdigit():
        raise ValueError(f"--offset takes TOPIC:PARTITION:OFFSET, got {text!r}")
    return topic, int(partition), int(rest)


def _iso(ms: int | None) -> str | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class Layout:
    """Where the n-th record of a part is in the file, as far as the format says."""

    lines_before: int | None  # lines before the first record's line; None: records are not lines
    element: str | None  # XML: the records' element path

    @classmethod
    def of(cls, settings: AppSettings) -> Layout:
        if settings.worker.mode != "structured":
            return cls(None, None)  # a template decides its own lines
        spec = load_worker_pack(settings).spec
        if spec.body is not None:
            return cls(None, None)  # records are folded into group lines
        out = spec.output
        if out.format == "xml":
            assert out.xml is not None
            path = [*out.xml.rootElement.split("/"), *([out.xml.bodyElement] if out.xml.bodyElement else [])]
            return cls(None, "/".join([*path, out.xml.recordElement]))
        if any(line.forEach is not None for line in spec.header):
            return cls(None, None)  # as many header lines as the data has keys
        before = len(spec.header) + (1 if out.format == "csv" and out.csv is not None and out.csv.headerRow else 0)
        return cls(before, None)

    def where(self, position: int) -> dict[str, Any]:
        if self.element is not None:
            return {"element": f"{self.element}[{position}]"}
        return {"line": None if self.lines_before is None else self.lines_before + position}


class Locator:
    def __init__(self, settings: AppSettings) -> None:
        self._settings = settings
        self._sink = build_sink(settings)
        self._entries = self._sink.manifest_entries()
        self._reader = RangeReader({"bootstrap.servers": settings.kafka.bootstrapServers,
                                    **confluent_security(settings.kafka.security)})
        self._decoder = build_decoder(settings)
        self._layout = Layout.of(settings)
        self._dead: dict[Coordinates, dict] | None = None
        self._deliveries: dict[str, list[DeliveryStatus]] | None = None

    def _delivery(self, name: str) -> str:
        """Where the file stands with each destination (the journal's delivery events)."""
        if not self._settings.delivery.sftp:
            return "none configured"
        if self._deliveries is None:
            self._deliveries = {}
            for read in read_statuses(self._settings):
                self._deliveries.setdefault(read.file_name, []).append(read)
        statuses = {s.destination: s for s in self._deliveries.get(name, [])}
        parts = []
        for destination in self._settings.delivery.sftp:
            status: DeliveryStatus | None = statuses.get(destination.name)
            if status is None:
                parts.append(f"{destination.name}: not queued")
            elif status.status == "delivered":
                parts.append(f"{destination.name}: delivered to {status.remote_path}")
            else:
                error = f", last error {status.error_class}" if status.error_class else ""
                parts.append(f"{destination.name}: {status.status} ({status.attempts} attempt(s){error})")
        return "; ".join(parts)

    def close(self) -> None:
        self._reader.close()

    def locate(self, coordinates: Coordinates) -> dict[str, Any]:
        topic, partition, offset = coordinates
        found: dict[str, Any] = {"record": f"{topic}/{partition}@{offset}"}
        entry = self._entry_of(coordinates)
        if entry is not None:
            position = self._position(entry, coordinates)
            found.update(status="in a file", file=entry["name"], part=entry["part"], position=position,
                         **self._layout.where(position), location=self._sink.location(entry["name"]),
                         delivery=self._delivery(entry["name"]), file_key=entry["file_key"],
                         window_start=_iso(entry["window_start"]), window_end=_iso(entry["window_end"]))
            return found
        letter = self._dead_letters().get(coordinates)
        if letter is not None:
            found.update(status="dead-lettered", reason=letter["reason"], detail=letter["detail"])
            return found
        found["status"] = "in no file yet (its window is open, or the record was not read yet)"
        return found

    def by_key(self, field: str, value: str, from_ms: int, to_ms: int) -> Iterator[Coordinates]:
        """Records whose ``field`` reads ``value``, among those with a Kafka timestamp in the range
        (only that range of each input partition is read)."""
        for topic in self._settings.kafka.inputTopics:
            ranges = []
            for partition in self._reader.partitions(topic):
                start = self._reader.offset_at(topic, partition, from_ms)
                if start is None:
                    continue
                end = self._reader.offset_at(topic, partition, to_ms)
                if end is not None and not self._at_or_after(topic, partition, end, to_ms):
                    end = None  # not an end (a broker may answer a time past its last record so): to the log end
                if end is not None and end <= start:
                    continue  # nothing stamped within the range
                ranges.append(PartitionRange(topic, partition, start, end))
            for batch in self._reader.read(ranges):
                for raw in batch:
                    if raw.timestamp_ms is not None and not from_ms <= raw.timestamp_ms < to_ms:
                        continue
                    try:
                        record = self._decoder.decode(raw)
                    except DecodeError:
                        continue  # a dead letter: found by its offset, not by a field it lacks
                    if isinstance(record.value, dict) and str(record.value.get(field)) == value:
                        yield raw.topic, raw.partition, raw.offset

    def _at_or_after(self, topic: str, partition: int, offset: int, timestamp_ms: int) -> bool:
        """The record at ``offset`` exists and is stamped at or after ``timestamp_ms``."""
        for batch in self._reader.read([PartitionRange(topic, partition, offset, offset + 1)]):
            for raw in batch:
                return raw.timestamp_ms is None or raw.timestamp_ms >= timestamp_ms
        return False

    def _entry_of(self, coordinates: Coordinates) -> dict | None:
        topic, partition, offset = coordinates
        for entry in self._entries:
            for source in entry["offsets"]:
                if source["topic"] == topic and source["partition"] == partition and any(
                        int(first) <= offset <= int(last) for first, last in source["ranges"]):
                    return entry
        return None

    def _position(self, entry: dict, coordinates: Coordinates) -> int:
        """1-based, in the part's file order (offset order per partition; business files by
        event time, topic, partition, offset as the worker orders them)."""
        wanted = {(s["topic"], s["partition"]): [(int(a), int(b)) for a, b in s["ranges"]] for s in entry["offsets"]}
        spans = [PartitionRange(topic, partition, min(a for a, _ in ranges), max(b for _, b in ranges) + 1)
                 for (topic, partition), ranges in sorted(wanted.items())]
        records = []
        for batch in self._reader.read(spans):
            for raw in batch:
                if any(a <= raw.offset <= b for a, b in wanted[(raw.topic, raw.partition)]):
                    records.append(self._decoder.decode(raw))
        if entry["scope"] == "window":
            records.sort(key=file_order)
        else:
            records.sort(key=lambda r: r.offset)
        keys = [(r.topic, r.partition, r.offset) for r in records]
        return keys.index(coordinates) + 1

    def _dead_letters(self) -> dict[Coordinates, dict]:
        if self._dead is None:
            from stream_app.tools.events import dead_letters

            self._dead = {(d.envelope["source_topic"], int(d.envelope["source_partition"]),
                           int(d.envelope["source_offset"])): d.envelope for d in dead_letters(self._settings)}
        return self._dead


def locate(settings: AppSettings, coordinates: Iterable[Coordinates]) -> list[dict[str, Any]]:
    locator = Locator(settings)
    try:
        return [locator.locate(c) for c in coordinates]
    finally:
        locator.close()


def locate_by_key(settings: AppSettings, field: str, value: str, from_ms: int, to_ms: int) -> list[dict[str, Any]]:
    locator = Locator(settings)
    try:
        return [locator.locate(c) for c in list(locator.by_key(field, value, from_ms, to_ms))]
    finally:
        locator.close()




def describe(row: dict[str, Any]) -> str:
    """One line for a person: where the record is, or why it is in no file."""
    if row["status"] == "in a file":
        where = (f", element {row['element']}" if "element" in row else
                 f", line {row['line']}" if row.get("line") is not None else "")
        return (f"{row['record']}: {row['file']} (part {row['part']}, record {row['position']}{where}) at "
                f"{row['location']}; window {row['window_start']} .. {row['window_end']}; delivery: {row['delivery']}")
    if row["status"] == "dead-lettered":
        return f"{row['record']}: dead-lettered, {row['reason']}: {row['detail']}"
    return f"{row['record']}: {row['status']}"
