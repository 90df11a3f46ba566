"""Small confluent-kafka helpers used by the demo and the tests: produce, read back, offsets."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition

from stream_app.codecs.event_schemas import dead_letter_reader, journal_reader
from stream_app.ops.problems import group_committed

_JOURNAL, _DEAD_LETTERS = journal_reader(), dead_letter_reader()


def produce(bootstrap: str, topic: str, values: Iterable[tuple[int, bytes | None, bytes]],
            compression: str = "none") -> int:
    """Produce (partition, key, value) in order, in batches compressed with ``compression``
    (librdkafka's ``compression.type``); returns how many were acknowledged."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "enable.idempotence": False,
                         "max.in.flight.requests.per.connection": 1, "acks": "all", "message.max.bytes": 8_000_000,
                         "compression.type": compression})
    errors: list[str] = []
    count = 0

    def on_delivery(err: Any, _msg: Any) -> None:
        if err is not None:
            errors.append(str(err))

    for partition, key, value in values:
        while True:
            try:
                producer.produce(topic, value=value, key=key, partition=partition, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.1)
        count += 1
        producer.poll(0)
    producer.flush(60)
    if errors:
        raise RuntimeError(f"{len(errors)} records were not delivered: {errors[0]}")
    return count


def read_topic(bootstrap: str, topic: str, expect: int | None = None, timeout_s: float = 10.0) -> list[Any]:
    """Read a topic from the beginning on assigned partitions (no group membership, no commits).

    With ``expect``: stops when that many records were read, or at ``timeout_s`` (records may
    still be on their way).  Without: stops once every partition reported end-of-partition (what
    is there now), or at ``timeout_s``.  End-of-partition comes from fetch responses, which the
    embedded broker reports correctly even when its listed high watermark lags.
    """
    consumer = Consumer({
        "bootstrap.servers": bootstrap, "group.id": f"reader-{uuid.uuid4()}", "enable.auto.commit": False,
        "auto.offset.reset": "earliest", "enable.partition.eof": True,
    })
    messages: list[Any] = []
    try:
        meta = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if meta is None or meta.error is not None or not meta.partitions:
            return messages
        partitions = sorted(meta.partitions)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        at_end: set[int] = set()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for msg in consumer.consume(1000, timeout=0.2):
                error = msg.error()
                if error is None:
                    messages.append(msg)
                    at_end.discard(msg.partition())
                elif error.code() == KafkaError._PARTITION_EOF:
                    at_end.add(msg.partition() or 0)
            if expect is not None and len(messages) >= expect:
                break
            if expect is None and len(at_end) == len(partitions):
                break
    finally:
        consumer.close()
    return messages


def decode_journal(payload: bytes | None) -> dict:
    """A journal event of any version written with the local ids (codecs/event_schemas.py)."""
    return _JOURNAL.decode(payload)


def read_journal(bootstrap: str, topic: str, **kwargs: Any) -> list[dict]:
    return [decode_journal(m.value()) for m in read_topic(bootstrap, topic, **kwargs)]


def decode_dead_letter(payload: bytes | None) -> dict:
    """A dead-letter envelope of any version written with the local ids."""
    return _DEAD_LETTERS.decode(payload)


def read_dead_letters(bootstrap: str, topic: str, **kwargs: Any) -> list[dict]:
    return [decode_dead_letter(m.value()) for m in read_topic(bootstrap, topic, **kwargs)]


def committed_offsets(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int]:
    """Committed offset per partition of a consumer group (-1001 when none)."""
    found = group_committed({"bootstrap.servers": bootstrap, "group.id": group}, [(topic, p) for p in range(partitions)])
    return {tp.partition: tp.offset for tp in found}
