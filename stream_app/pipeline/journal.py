"""Journal events: one Avro record per lifecycle step, published to the journal topic.

Event ids are derived from the app id (the consumer group) and what the event is about (file
key, part, attempt), so a step repeated after a restart publishes the same id and consumers
de-duplicate on it, and two apps that share a journal topic never share an id.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from stream_app.codecs.avro import encode_confluent
from stream_app.codecs.event_schemas import JOURNAL_SCHEMA, JOURNAL_SCHEMA_ID
from stream_app.core.windows import FileCut, FileKey

if TYPE_CHECKING:
    from stream_app.pipeline.outbox import Delivery


def event_id(*parts: Any) -> str:
    return hashlib.sha256("|".join(str(p) for p in parts).encode()).hexdigest()[:32]


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def _offsets(cut: FileCut) -> list[dict]:
    return [
        {"topic": topic, "partition": partition, "first": first, "last": last}
        for (topic, partition), ranges in cut.source_ranges().items() for first, last in ranges
    ]


class Journal:
    """Builds journal events; ``publish`` is injected (Kafka producer in the worker)."""

    def __init__(self, worker_id: str, app_id: str = "stream-app") -> None:
        self.worker_id = worker_id
        self.app_id = app_id

    def _event(self, event_type: str, eid: str, key: FileKey | None = None, **fields: Any) -> dict:
        event: dict[str, Any] = {
            "event_id": event_id(self.app_id, eid),
            "event_type": event_type,
            "occurred_at": now_ms(),
            "worker_id": self.worker_id,
            "file_key": key.id if key else None,
            "window_start": key.window_start_ms if key else None,
            "window_end": key.window_end_ms if key else None,
            "offsets": [],
        }
        event.update(fields)
        return event

    def opened(self, key: FileKey) -> dict:
        return self._event("opened", event_id("opened", key.id), key)

    def closed(self, key: FileKey, parts: int, reason: str) -> dict:
        return self._event("closed", event_id("closed", key.id), key, part=parts, reason=reason)

    def created(self, cut: FileCut, name: str, size: int, sha256: str, location: str | None = None,
                url: str | None = None) -> dict:
        return self._event(
            "created", event_id("created", cut.key.id, cut.part), cut.key, part=cut.part, file_name=name,
            records=cut.count, bytes=size, sha256=sha256, reason=cut.reason, offsets=_offsets(cut),
            location=location, url=url,
        )

    def write_failed(self, cut: FileCut, name: str | None, error_class: str, message: str, attempt: int,
                     terminal: bool = False) -> dict:
        return self._event(
            "write-failed", event_id("write-failed", cut.key.id, cut.part, attempt), cut.key, part=cut.part,
            file_name=name, records=cut.count, error_class=error_class, error_message=message,
            attempt=attempt, offsets=_offsets(cut), terminal=terminal,
        )

    def finalize_failed(self, cut: FileCut, error_class: str, message: str, attempt: int,
                        terminal: bool = True) -> dict:
        return self._event(
            "finalize-failed", event_id("finalize-failed", cut.key.id, cut.part, attempt), cut.key, part=cut.part,
            records=cut.count, error_class=error_class, error_message=message, attempt=attempt,
            offsets=_offsets(cut), terminal=terminal,
        )

    def validation_failed(self, cut: FileCut, message: str, source: tuple[str, int, int] | None,
                          attempt: int) -> dict:
        offsets = _offsets(cut) if source is None else [
            {"topic": source[0], "partition": source[1], "first": source[2], "last": source[2]}]
        return self._event(
            "validation-failed", event_id("validation-failed", cut.key.id, cut.part, attempt), cut.key,
            part=cut.part, records=cut.count, error_class="VALIDATION_FAILED", error_message=message,
            attempt=attempt, offsets=offsets, terminal=True,
        )

    def delivery_queued(self, d: Delivery) -> dict:
        return self._event("delivery-queued", event_id("delivery-queued", d.destination, d.name), None,
                           **d.event_fields())

    def delivered(self, d: Delivery, remote_path: str, fingerprint: str, attempt: int,
                  request: str | None = None) -> dict:
        """``request``: a re-delivery asked for by a person (its own event id)."""
        return self._event("delivered", event_id("delivered", d.destination, d.name, request or ""), None,
                           **d.event_fields(),
                           remote_path=remote_path, server_fingerprint=fingerprint, attempt=attempt)

    def delivery_failed(self, d: Delivery, error_class: str, message: str, attempt: int, terminal: bool,
                        request: str | None = None) -> dict:
        return self._event("delivery-failed", event_id("delivery-failed", d.destination, d.name, attempt,
                                                       request or ""), None,
                           **d.event_fields(), error_class=error_class, error_message=message, attempt=attempt,
                           terminal=terminal)

    def flush_summary(self, files: int, records: int, size: int, failed: int) -> dict:
        eid = event_id("flush-summary", self.worker_id, time.time_ns())
        return self._event(
            "flush-summary", eid, None, records=records, bytes=size, part=files,
            reason=f"files={files} failed={failed}",
        )


def encode_events(events: Iterable[dict], schema_id: int = JOURNAL_SCHEMA_ID) -> list[bytes]:
    """``schema_id``: the id the registry gave the journal schema (codecs/registry.py)."""
    return [encode_confluent(schema_id, JOURNAL_SCHEMA, e) for e in events]
