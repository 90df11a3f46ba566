"""Journal and dead-letter events on their topics, written by confluent-kafka.

A failed delivery is never a crash: librdkafka retries within ``message.timeout.ms`` on its
own; what still fails (the broker away for longer, a refused request) is produced again with a
doubling backoff by ``delivered()``, which the durable steps await before the facts, the
checkpoint and the commit that depend on the events. While events cannot be delivered,
``undeliverable`` says why (``/readyz`` answers 503 with it). The idempotent producer keeps
each partition's events in order across librdkafka's retries.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from functools import partial
from typing import Any

from confluent_kafka import KafkaException

from stream_app.codecs.registry import event_schema_ids
from stream_app.config import AppSettings
from stream_app.core.records import RawRecord
from stream_app.ops.metrics import Metrics
from stream_app.ops.producer_calls import serve
from stream_app.ops.security import confluent_security
from stream_app.pipeline.deadletter import dead_letter
from stream_app.pipeline.journal import encode_events

log = logging.getLogger(__name__)

RETRY_INITIAL_S = 0.5
# Errors after which an idempotent producer's identity is gone (the broker lost or fenced it):
# the producer is replaced, since it cannot send again under its old id and epoch.
_PRODUCER_STATE_LOST = frozenset({"PRODUCER_FENCED", "OUT_OF_ORDER_SEQUENCE_NUMBER", "UNKNOWN_PRODUCER_ID",
                                  "INVALID_PRODUCER_EPOCH"})
RETRY_MAX_S = 30.0


async def wait_to_redeliver(reason: str, backoff_s: float) -> float:
    """Report a delivery failure and wait ``backoff_s``; gives the next backoff (doubling)."""
    log.warning("%s; delivering them again in %.1f s", reason, backoff_s)
    await asyncio.sleep(backoff_s)
    return min(RETRY_MAX_S, backoff_s * 2)


class KafkaEventProducer:
    def __init__(self, settings: AppSettings, retry_initial_s: float = RETRY_INITIAL_S,
                 message_timeout_ms: int = 30_000) -> None:
        from confluent_kafka import Producer

        kafka = settings.kafka
        conf: dict[str, Any] = {
            "bootstrap.servers": kafka.bootstrapServers, **confluent_security(kafka.security),
            "enable.idempotence": True, "acks": "all", "linger.ms": 5,
            "partitioner": "murmur2_random",  # the Java client's (and aiokafka's) partition per key
            # a dead-letter envelope is at most maxMessageBytes (deadletter.py), plus the request
            "message.max.bytes": max(1_000_000, kafka.maxMessageBytes + 65_536),
            "message.timeout.ms": message_timeout_ms,  # then delivered() produces it again, with a backoff
            "log_level": 4, "logger": logging.getLogger("librdkafka.events"),
        }
        self._make = lambda: Producer(conf)
        self._producer = self._make()
        self._fatal = False
        # The events produced and not yet confirmed, by sequence number: after a fatal error the
        # delivery reports can no longer be counted on (ops/producer_calls.py), so what is
        # unconfirmed then is produced again rather than lost.
        self._unconfirmed: dict[int, tuple[str, bytes | None, bytes]] = {}
        self._sequence = 0
        self._failed: dict[int, tuple[str, str, bytes | None, bytes]] = {}  # by sequence: why, the event
        # Delivery reports as they come, in the thread that polls or flushes; the books above are
        # kept by the event loop's thread alone (_settle).  A report only appends here, one call,
        # and takes no lock: with the library's fatal error pending, a call can fail after it
        # acted, so a lock taken in a report could stay taken for good (ops/producer_calls.py).
        self._reports: deque[tuple[int, Any]] = deque()
        self._retry_initial_s = retry_initial_s
        self.undeliverable: str | None = None

    def _on_delivery(self, sequence: int, err: Any, msg: Any) -> None:  # in the thread that polls or flushes
        self._reports.append((sequence, err))

    def _settle(self) -> None:
        """Take the delivery reports that came into the books (the event loop's thread)."""
        while self._reports:
            sequence, err = self._reports.popleft()
            event = self._unconfirmed.pop(sequence, None)
            if err is None:
                continue
            if event is not None:
                self._failed[sequence] = (str(err), *event)
            # e.g. PRODUCER_FENCED when the idempotent producer re-initialises against a broker
            # that lost its producer state: this producer can send nothing more
            self._fatal = self._fatal or bool(err.fatal()) or err.name() in _PRODUCER_STATE_LOST

    def produce(self, topic: str, key: bytes | None, value: bytes) -> None:
        self._sequence += 1
        sequence = self._sequence
        self._unconfirmed[sequence] = (topic, key, value)
        while not self._fatal:
            try:
                self._producer.produce(topic, value, key, on_delivery=partial(self._on_delivery, sequence))
                break
            except BufferError:  # librdkafka's queue is full: let it send some first
                if serve(self._producer, 0.05) is not None:
                    self._fatal = True
                self._settle()
            except KafkaException as exc:  # the producer is in a fatal state: delivered() replaces it
                log.warning("the event producer refused an event: %s", exc)
                self._fatal = True
        if serve(self._producer) is not None:
            self._fatal = True
        self._settle()  # a delivery report it served may say the producer is finished

    async def delivered(self) -> None:
        """Every event produced so far is acknowledged; failures are produced again until they are."""
        backoff = self._retry_initial_s
        while True:
            # Queued or in flight; in steps, so a stop never blocks in flush().  A finished
            # producer delivers nothing more: what it holds is unconfirmed, and produced again.
            while len(self._producer):
                if await asyncio.to_thread(serve, self._producer, 2.0) is not None:
                    self._fatal = True
                    break
                self._settle()
            self._settle()
            if self._fatal:  # reports lost or never to come: whatever is unconfirmed failed
                self._failed.update((sequence, ("the event producer failed", *event))
                                    for sequence, event in self._unconfirmed.items())
                self._unconfirmed.clear()
            failed = [self._failed[sequence] for sequence in sorted(self._failed)]  # in the order produced
            self._failed.clear()
            if not failed:
                self.undeliverable = None
                return
            self.undeliverable = f"{len(failed)} journal/dead-letter event(s) not delivered: {failed[0][0]}"
            backoff = await wait_to_redeliver(self.undeliverable, backoff)
            if self._fatal:
                log.warning("the event producer is in a fatal state; starting a new one")
                self._producer, self._fatal = self._make(), False
                self._reports.clear()  # the old producer's: its events are all in failed
            for _, topic, key, value in failed:
                self.produce(topic, key, value)

    def close(self, timeout_s: float = 10.0) -> None:
        serve(self._producer, timeout_s)


class EventPublisher:
    """The pipeline's ``Publisher`` in the worker: journal and dead-letter events (live/events.py)."""

    def __init__(self, settings: AppSettings, metrics: Metrics) -> None:
        self.producer = KafkaEventProducer(settings)
        self._metrics = metrics
        self._journal_topic = settings.kafka.journalTopic
        self._dead_topic = settings.kafka.deadLetterTopic
        self._worker_id = settings.workerId
        self._app_id = settings.appId
        self._max_bytes = settings.kafka.maxMessageBytes
        self.schema_ids = event_schema_ids(settings)  # registered when a registry is configured
        self.dead_letters: dict[str, int] = {}
        self._logged: dict[str, int] = {}

    def log_dead_letters(self) -> None:
        """One line per batch that dead-lettered anything (never a line per record)."""
        if self.dead_letters != self._logged:
            delta = {r: n - self._logged.get(r, 0) for r, n in self.dead_letters.items() if n != self._logged.get(r, 0)}
            log.warning("dead-lettered %s", ", ".join(f"{n} {r}" for r, n in sorted(delta.items())))
            self._logged = dict(self.dead_letters)

    def journal(self, event: dict, partition_key: str) -> None:
        (payload,) = encode_events([event], self.schema_ids.journal)
        self.producer.produce(self._journal_topic, partition_key.encode(), payload)

    def dead_letter(self, raw: RawRecord, reason: str, detail: str) -> None:
        self.dead_letters[reason] = self.dead_letters.get(reason, 0) + 1
        self._metrics.dead_letters.labels(reason).inc()
        log.debug("dead-lettered %s/%d@%d: %s", raw.topic, raw.partition, raw.offset, reason)
        self.producer.produce(self._dead_topic, raw.key, dead_letter(raw, reason, detail, self._worker_id,
                                                                    self.schema_ids.dead_letter, self._app_id,
                                                                    self._max_bytes))

    @property
    def undeliverable(self) -> str | None:
        return self.producer.undeliverable

    async def delivered(self) -> None:
        await self.producer.delivered()
