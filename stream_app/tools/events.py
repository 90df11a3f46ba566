"""``stream-app journal`` and ``stream-app dead-letters``: read the worker's own topics, and send
fixed or late records back to an input topic.

Both read on assigned partitions from the beginning (no group, no commits) with confluent-kafka,
decode with the schemas in ``avro/`` (whatever id the header carries: the journal and dead-letter
schemas are this project's), and stop at the end of every partition unless ``follow``.

Re-drive sends each source record once: it produces the selected envelopes' original key, value
and headers (plus ``stream-app-redrive: <source topic>/<partition>/<offset>``) and commits the
dead-letter offsets of the consumer group ``<appId>-redrive`` after the produce is
acknowledged, so a second run continues after them (envelopes it passes over are committed
too).  Dead letters are at least once (a worker that re-reads a partition after a restart
writes them again), so a source record is sent once per run, and not at all when the target
topic already holds a re-driven copy (its records produced since the oldest selected dead
letter are scanned for the header).
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition

from stream_app.codecs.event_schemas import EventDecodeError, EventReader, dead_letter_reader, journal_reader
from stream_app.config import AppSettings
from stream_app.core.records import REDRIVE_HEADER
from stream_app.ops.problems import retried, topic_partitions
from stream_app.ops.producer_calls import serve
from stream_app.ops.security import confluent_security


def _client_config(settings: AppSettings) -> dict[str, Any]:
    return {"bootstrap.servers": settings.kafka.bootstrapServers, **confluent_security(settings.kafka.security)}


def _to_end(consumer: Any, partitions: int, follow: bool = False, stop: Callable[[], bool] = lambda: False,
            idle_s: float | None = None) -> Iterator[Any]:
    """The records an assigned consumer reads, until every one of its ``partitions`` reported its
    end (or on, ``follow``; or once nothing came for ``idle_s``).  A record delivered again (a
    fetch retried after end-of-partition) is given once."""
    at_end: set[int] = set()
    positions: dict[int, int] = {}
    quiet_since = time.monotonic()
    while not stop() and (idle_s is None or time.monotonic() - quiet_since < idle_s):
        for msg in consumer.consume(500, timeout=0.5):
            partition, offset, error = msg.partition() or 0, msg.offset() or 0, msg.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    at_end.add(partition)
                continue
            if offset < positions.get(partition, -1):
                continue
            positions[partition] = offset + 1
            at_end.discard(partition)
            quiet_since = time.monotonic()
            yield msg
        if not follow and len(at_end) >= partitions:
            return


def read_topic(settings: AppSettings, topic: str, follow: bool = False,
               stop: Callable[[], bool] = lambda: False) -> Iterator[Any]:
    """Messages of ``topic`` from the beginning; to the end of every partition, or on (``follow``)."""
    consumer = Consumer({**_client_config(settings), "group.id": f"stream-app-inspect-{uuid.uuid4().hex}",
                         "enable.auto.commit": False, "auto.offset.reset": "earliest",
                         "enable.partition.eof": True, "log_level": 0})
    try:
        partitions = topic_partitions(consumer, topic)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        yield from _to_end(consumer, len(partitions), follow, stop)
    finally:
        consumer.close()


def plain(value: Any) -> Any:
    """A decoded event as JSON-ready values (timestamps as ISO-8601 UTC)."""
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


# -- journal --------------------------------------------------------------------------------------

@dataclass
class JournalFilter:
    types: tuple[str, ...] = ()
    file_key: str | None = None
    window_start_ms: int | None = None
    since_ms: int | None = None
    until_ms: int | None = None

    def matches(self, event: dict) -> bool:
        occurred = _millis(event["occurred_at"])
        start = event.get("window_start")
        return ((not self.types or event["event_type"] in self.types)
                and (self.file_key is None or event.get("file_key") == self.file_key)
                and (self.window_start_ms is None or (start is not None and _millis(start) == self.window_start_ms))
                and (self.since_ms is None or occurred >= self.since_ms)
                and (self.until_ms is None or occurred < self.until_ms))


def _millis(value: datetime | int) -> int:
    return value if isinstance(value, int) else int(value.timestamp() * 1000)


def _event_reader(settings: AppSettings, make: Callable[..., EventReader]) -> EventReader:
    """Local ids always; the registry's too when the config names one (registerEventSchemas)."""
    registry = settings.input.schemaRegistry
    if registry is None:
        return make()
    from stream_app.codecs.registry import SchemaLookup, client_conf

    return make(SchemaLookup(client_conf(registry)).schema_text)


def _decoded(reader: EventReader, msg: Any) -> dict:
    try:
        return reader.decode(msg.value())
    except EventDecodeError as exc:
        raise EventDecodeError(f"{msg.topic()}/{msg.partition()}@{msg.offset()}: {exc}") from None


def journal_events(settings: AppSettings, selection: JournalFilter, follow: bool = False,
                   stop: Callable[[], bool] = lambda: False) -> Iterator[dict]:
    reader = _event_reader(settings, journal_reader)
    for msg in read_topic(settings, settings.kafka.journalTopic, follow, stop):
        event = _decoded(reader, msg)
        if selection.matches(event):
            yield event


def window_summary(events: list[dict]) -> list[dict]:
    """Per file window: files created (distinct event ids: re-sent events count once), records,
    bytes, failures, and whether it was closed."""
    windows: dict[str, dict] = {}
    seen: set[str] = set()
    for event in events:
        if event["event_id"] in seen or event.get("file_key") is None:
            continue
        seen.add(event["event_id"])
        row = windows.setdefault(event["file_key"], {
            "file_key": event["file_key"], "window_start": plain(event.get("window_start")),
            "files": 0, "records": 0, "bytes": 0, "failures": 0, "closed": False})
        kind = event["event_type"]
        if kind == "created":
            row["files"] += 1
            row["records"] += event.get("records") or 0
            row["bytes"] += event.get("bytes") or 0
        elif kind in ("write-failed", "finalize-failed", "validation-failed"):
            row["failures"] += 1
        elif kind == "closed":
            row["closed"] = True
    return sorted(windows.values(), key=lambda r: (r["window_start"] or "", r["file_key"]))


# -- dead letters ---------------------------------------------------------------------------------

@dataclass
class DeadLetter:
    partition: int  # of the dead-letter topic
    offset: int
    envelope: dict

    def describe(self, show_values: bool = False) -> dict:
        env = self.envelope
        value = env.get("original_value")
        row = {"event_id": env.get("event_id") or None,
               "dead_letter": f"{env.get('source_topic')}/{env['source_partition']}@{env['source_offset']}",
               "at": f"{self.partition}/{self.offset}", "reason": env["reason"], "detail": env["detail"],
               "value_bytes": None if value is None else len(value),
               "value_sha256": None if value is None else hashlib.sha256(value).hexdigest(),
               "dead_lettered_at": plain(env["dead_lettered_at"])}
        if show_values:
            row["value"] = None if value is None else value.decode("utf-8", "backslashreplace")
        return row


def dead_letters(settings: AppSettings, reasons: tuple[str, ...] = ()) -> Iterator[DeadLetter]:
    reader = _event_reader(settings, dead_letter_reader)
    for msg in read_topic(settings, settings.kafka.deadLetterTopic):
        envelope = _decoded(reader, msg)
        if not reasons or envelope["reason"] in reasons:
            yield DeadLetter(msg.partition() or 0, msg.offset() or 0, envelope)


@dataclass
class RedriveReport:
    produced: int
    skipped: int  # considered before, or not selected


def redriven_sources(settings: AppSettings, topic: str, since_ms: int) -> set[str]:
    """The ``stream-app-redrive`` header values of ``topic``'s records produced since ``since_ms``
    (Kafka timestamps: a re-driven record is produced after its dead letter was written)."""
    consumer = Consumer({**_client_config(settings), "group.id": f"stream-app-inspect-{uuid.uuid4().hex}",
                         "enable.auto.commit": False, "enable.partition.eof": True, "log_level": 0})
    found: set[str] = set()
    try:
        starts = consumer.offsets_for_times([TopicPartition(topic, p, since_ms) for p in topic_partitions(consumer, topic)],
                                            timeout=15)
        todo = [tp for tp in starts if tp.offset >= 0]  # -1: nothing produced since
        if not todo:
            return found
        consumer.assign(todo)
        for msg in _to_end(consumer, len(todo), idle_s=10):
            raw_headers = msg.headers() or ()
            pairs = raw_headers.items() if isinstance(raw_headers, dict) else raw_headers
            for key, value in pairs:
                if key == REDRIVE_HEADER and value is not None:
                    found.add(value if isinstance(value, str) else value.decode("utf-8", "replace"))
    finally:
        consumer.close()
    return found


def redrive(settings: AppSettings, reasons: tuple[str, ...], to_topic: str | None = None,
            idle_s: float = 3.0) -> RedriveReport:
    """Send the selected dead letters back (their source topic, or ``to_topic``), each source
    record once: not twice in a run, and not again when a re-driven copy is already there."""
    config = _client_config(settings)
    topic = settings.kafka.deadLetterTopic
    consumer = Consumer({**config, "group.id": f"{settings.appId}-redrive", "enable.auto.commit": False,
                         "auto.offset.reset": "earliest", "enable.partition.eof": True, "log_level": 0})
    producer = Producer({**config, "enable.idempotence": True, "acks": "all", "log_level": 0})
    errors: list[str] = []
    skipped = 0
    selected: dict[tuple[str, int, int], dict] = {}  # source record -> its first envelope
    reader = _event_reader(settings, dead_letter_reader)
    try:
        partitions = topic_partitions(consumer, topic)
        committed = retried(lambda: consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=15))
        consumer.assign([TopicPartition(topic, tp.partition, tp.offset if tp.offset >= 0 else OFFSET_BEGINNING)
                         for tp in committed])
        positions: dict[int, int] = {}
        for msg in _to_end(consumer, len(partitions), idle_s=idle_s):
            positions[msg.partition() or 0] = (msg.offset() or 0) + 1
            envelope = _decoded(reader, msg)
            source = (envelope["source_topic"], envelope["source_partition"], envelope["source_offset"])
            if ((reasons and envelope["reason"] not in reasons) or envelope.get("original_value") is None
                    or source in selected):
                skipped += 1  # not selected, or the same record dead-lettered again (a re-read)
                continue
            selected[source] = envelope
        # Dead letters are at least once: a copy written after an earlier run must not send its
        # record a second time, so look for the copies that run already sent.
        since = min((_millis(e["dead_lettered_at"]) for e in selected.values()), default=0) - 60_000
        targets = {to_topic or source[0] for source in selected}
        already = set().union(*(redriven_sources(settings, target, since) for target in targets)) if selected else set()
        produced = 0
        failed: str | None = None  # the producer's fatal error (ops/producer_calls.py)
        for source, envelope in selected.items():
            marker = "/".join(str(part) for part in source)
            if marker in already:
                skipped += 1
                continue
            headers = [(h["key"], h["value"]) for h in envelope.get("original_headers") or []
                       if h["key"] != REDRIVE_HEADER]
            headers.append((REDRIVE_HEADER, marker.encode()))
            producer.produce(to_topic or envelope["source_topic"], value=envelope["original_value"],
                             key=envelope.get("original_key"), headers=headers,
                             on_delivery=lambda err, _m: errors.append(str(err)) if err else None)
            produced += 1
            if failed := serve(producer):
                break
        failed = failed or serve(producer, 30.0)
        if failed or errors or len(producer):
            raise RuntimeError(f"re-drive not acknowledged ({failed or (errors[0] if errors else 'timed out')}); "
                               "nothing committed: run it again")
        if positions:  # only after every produce is acknowledged
            consumer.commit(offsets=[TopicPartition(topic, p, o) for p, o in positions.items()], asynchronous=False)
    finally:
        consumer.close()
    return RedriveReport(produced, skipped)
