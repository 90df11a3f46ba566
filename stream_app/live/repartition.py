"""The repartition topic of business files: created at start, written by confluent-kafka.

The routing stage's records go through confluent-kafka rather than Faust's aiokafka producer:
librdkafka batches, compresses and sends in its own threads (outside the GIL), several times
faster per record than aiokafka here, and its idempotent producer keeps each partition's
records in order across retries — the file stage relies on a source partition's records
arriving before that partition's close frontier.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from stream_app.config import AppSettings
from stream_app.ops.security import confluent_security

log = logging.getLogger(__name__)


class RepartitionTopicError(RuntimeError):
    """The repartition topic exists with another partition count: a terminal configuration error."""


def ensure_repartition_topic(settings: AppSettings, timeout_s: float = 30.0) -> None:
    """Create ``<appId>-files-repartition`` when missing; refuse one with a different partition count
    (file keys would move to other partitions and their records to other owners)."""
    from confluent_kafka.admin import AdminClient, NewTopic

    kafka = settings.kafka
    name, partitions = settings.repartition_topic, kafka.repartition_partitions
    admin = AdminClient({"bootstrap.servers": kafka.bootstrapServers, "log_level": 0,
                         **confluent_security(kafka.security)})
    meta = admin.list_topics(timeout=timeout_s).topics.get(name)
    if meta is not None and meta.error is None:
        if len(meta.partitions) != partitions:
            raise RepartitionTopicError(
                f"topic {name} has {len(meta.partitions)} partitions but kafka.repartitionPartitions is {partitions}; "
                "a repartition topic cannot be resized while files are open (drain it, or use a new appId)")
        return
    topic = NewTopic(name, num_partitions=partitions, replication_factor=kafka.replicationFactor,
                     config={"retention.ms": str(kafka.repartitionRetentionMs), "cleanup.policy": "delete"})
    for _, future in admin.create_topics([topic], request_timeout=timeout_s).items():
        try:
            future.result()
            log.info("created the repartition topic %s (%d partitions)", name, partitions)
        except Exception as exc:  # another replica created it meanwhile
            if "TOPIC_ALREADY_EXISTS" not in str(exc) and "already exists" not in str(exc):
                raise


class RepartitionSendError(RuntimeError):
    pass


class KafkaRepartitionSender:
    """``RepartitionSender`` for the live worker; ``delivered()`` waits for every acknowledgement."""

    def __init__(self, settings: AppSettings) -> None:
        from confluent_kafka import Producer

        kafka = settings.kafka
        self.topic = settings.repartition_topic
        self._producer = Producer({
            "bootstrap.servers": kafka.bootstrapServers, **confluent_security(kafka.security),
            "enable.idempotence": True, "acks": "all", "linger.ms": 5,
            "queue.buffering.max.kbytes": 262144, "log_level": 4,
            # through Python logging (and its OutageFilter), not straight to stderr
            "logger": logging.getLogger("librdkafka.repartition"),
        })
        self._errors: list[str] = []

    def _on_delivery(self, err: Any, msg: Any) -> None:  # runs in the thread that flushes
        if err is not None:
            self._errors.append(str(err))

    def send(self, partition: int, key: bytes, value: bytes) -> None:
        while True:
            try:
                self._producer.produce(self.topic, value, key, partition=partition, on_delivery=self._on_delivery)
                break
            except BufferError:  # librdkafka's queue is full: let it send some first
                self._producer.poll(0.05)
        self._producer.poll(0)

    async def delivered(self) -> None:
        # In steps, so that a stop (or a broker outage) never leaves a thread blocked in flush().
        while len(self._producer):  # queued or in flight
            await asyncio.to_thread(self._producer.flush, 2.0)
        if self._errors:
            errors, self._errors = self._errors, []
            raise RepartitionSendError(f"{len(errors)} repartition record(s) not delivered: {errors[0]}")

    def close(self) -> None:
        self._producer.flush(10)
