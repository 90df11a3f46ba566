"""A producer's fatal error, raised by librdkafka itself: it ends the producer's session, never
the worker, and loses no journal or dead-letter event (stream_app/ops/producer_calls.py).

librdkafka's own test hook, ``rd_kafka_test_fatal_error``, raises the fatal error on the
client's handle; confluent-kafka keeps that handle first in its Python object, after the object
header.  The hook is checked against the handle's name before any test relies on it.
"""

from __future__ import annotations

import asyncio
import collections
import ctypes
import glob
import logging
import os
import time
import uuid
from typing import Any

import confluent_kafka
import pytest
from confluent_kafka import Consumer, KafkaException, Producer

from stream_app.config import parse_config
from stream_app.live.events import KafkaEventProducer
from stream_app.live.repartition import KafkaRepartitionSender, RepartitionSendError
from stream_app.ops.producer_calls import serve
from tests.helpers import config_dict

INVALID_PRODUCER_EPOCH = 47  # as a broker that fenced the producer would answer
NOWHERE = "127.0.0.1:9"


def _librdkafka() -> ctypes.CDLL:
    (path,) = glob.glob(os.path.join(os.path.dirname(confluent_kafka.__file__), os.pardir,
                                     "confluent_kafka.libs", "librdkafka*"))
    lib = ctypes.CDLL(path)
    lib.rd_kafka_test_fatal_error.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p]
    lib.rd_kafka_name.argtypes = [ctypes.c_void_p]
    lib.rd_kafka_name.restype = ctypes.c_char_p
    return lib


def raise_fatal_error(producer: Any, client_id: str) -> None:
    """librdkafka raises a fatal error on this producer (as when a broker fences its id)."""
    lib = _librdkafka()
    handle = ctypes.c_void_p.from_address(id(producer) + object.__basicsize__).value
    name = lib.rd_kafka_name(handle).decode()
    assert name.startswith(f"{client_id}#producer-"), f"not the producer's handle: {name}"
    assert lib.rd_kafka_test_fatal_error(handle, INVALID_PRODUCER_EPOCH, b"test") == 0


def _producer(client_id: str) -> Producer:
    """An idempotent producer with nowhere to send (its messages stay queued), logging through Python."""
    return Producer({"bootstrap.servers": NOWHERE, "client.id": client_id, "enable.idempotence": True,
                     "log_level": 4, "logger": logging.getLogger("librdkafka.test")})


def test_confluent_kafka_raises_a_fatal_error_from_the_call_that_serves_it():
    """The library behaviour producer_calls.py is built for (a contract: if a confluent-kafka
    upgrade changes it, this says so): flush() raises, as a KafkaException or, when a callback
    ran into the pending error (here: the delivery reports of the purged queue), as a
    SystemError; the next call empties the queue."""
    reports: list[str] = []
    producer = _producer("contract")
    for _ in range(3):
        producer.produce("t", b"v", on_delivery=lambda err, msg: reports.append(str(err)))
    raise_fatal_error(producer, "contract")
    with pytest.raises((KafkaException, SystemError)):
        producer.flush(5.0)
    producer.flush(5.0)
    assert len(producer) == 0


def test_serve_reports_the_fatal_error_and_the_producer_can_be_drained():
    reports: list[str] = []
    producer = _producer("serve")
    for _ in range(3):
        producer.produce("t", b"v", on_delivery=lambda err, msg: reports.append(str(err)))
    assert serve(producer) is None  # poll(0): nothing fatal yet
    raise_fatal_error(producer, "serve")
    failed = serve(producer, 5.0)
    assert failed is not None and failed.startswith("producer failed (")
    assert serve(producer, 5.0) is None and len(producer) == 0


def test_the_repartition_sender_turns_a_fatal_error_into_a_rewind(tmp_path):
    """delivered() raises RepartitionSendError (the routing stage rewinds and routes again from
    its checkpoints), not the library's exception; after restart() a new producer sends."""
    out = tmp_path / "out"
    out.mkdir()
    settings = parse_config(config_dict(out, fileScope="window"))
    sender = KafkaRepartitionSender(settings)
    client_id = "rdkafka"  # librdkafka's default client.id
    for partition in range(3):
        sender.send(partition % 2, b"k", b"v")
    raise_fatal_error(sender._producer, client_id)
    with pytest.raises(RepartitionSendError):
        asyncio.run(sender.delivered())
    sender.send(0, b"k", b"after")  # nothing after the failure is sent before the rewind
    sender.restart()
    assert sender._broken is None and not sender._errors
    sender.close()


@pytest.mark.e2e
def test_events_survive_a_fatal_producer_error_every_one_delivered(kafka_bootstrap, tmp_path):
    """Journal and dead-letter events queued when librdkafka raises a fatal error: delivered()
    never raises, replaces the producer, and every event reaches its topic, in order per key,
    including those whose delivery report the library lost."""
    from stream_app.tools.broker import create_topics

    topic = f"events-fatal-{uuid.uuid4().hex[:8]}"
    create_topics(kafka_bootstrap, {topic: 2})
    settings = parse_config(config_dict(tmp_path, bootstrap=kafka_bootstrap))
    producer = KafkaEventProducer(settings, retry_initial_s=0.1)

    async def scenario() -> None:
        for i in range(10):
            producer.produce(topic, f"k{i % 3}".encode(), f"before-{i}".encode())
        await producer.delivered()
        for i in range(10):
            producer.produce(topic, f"k{i % 3}".encode(), f"queued-{i}".encode())
        raise_fatal_error(producer._producer, "rdkafka")
        producer.produce(topic, b"k0", b"after-the-error")  # refused by the old producer
        await asyncio.wait_for(producer.delivered(), 60)

    asyncio.run(scenario())
    assert producer.undeliverable is None
    producer.close()
    consumer = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": f"check-{topic}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topic])
    by_key: dict[bytes, list[bytes]] = {}
    deadline = time.monotonic() + 60
    expected = {f"before-{i}".encode() for i in range(10)} | {f"queued-{i}".encode() for i in range(10)} \
        | {b"after-the-error"}
    while {v for values in by_key.values() for v in values} != expected and time.monotonic() < deadline:
        msg = consumer.poll(1.0)
        if msg is not None and msg.error() is None:
            by_key.setdefault(msg.key(), []).append(msg.value())
    consumer.close()
    assert {v for values in by_key.values() for v in values} == expected
    for key, values in by_key.items():  # each key's events in the order produced (first copies)
        first = list(dict.fromkeys(values))
        queued = [v for v in first if v.startswith(b"queued-")]
        assert queued == sorted(queued, key=lambda v: int(v.split(b"-")[1])), (key, first)


class _ReportsThatFailAfterActing(collections.deque):
    """Each append takes the report, then raises, as any call does in a delivery report served
    while the library's fatal error is pending (test_confluent_kafka_raises_...: SystemError)."""

    def append(self, item: Any) -> None:
        super().append(item)
        raise SystemError("<class 'str'> returned a result with an exception set")


@pytest.mark.e2e
def test_delivery_reports_that_fail_after_acting_neither_block_nor_lose_events(kafka_bootstrap, tmp_path):
    """The report takes no lock and makes one call (live/events.py): a lock taken in a report
    that then failed stayed taken, and the next report blocked the commit round for good."""
    from stream_app.tools.broker import create_topics

    topic = f"events-reports-{uuid.uuid4().hex[:8]}"
    create_topics(kafka_bootstrap, {topic: 1})
    settings = parse_config(config_dict(tmp_path, bootstrap=kafka_bootstrap))
    producer = KafkaEventProducer(settings, retry_initial_s=0.1)
    producer._reports = _ReportsThatFailAfterActing()

    async def scenario() -> None:
        for i in range(20):
            producer.produce(topic, b"k", f"event-{i}".encode())
        await asyncio.wait_for(producer.delivered(), 30)

    asyncio.run(scenario())
    assert producer.undeliverable is None and not producer._unconfirmed and not producer._failed
    producer.close()


class _Finished:
    """A producer after its fatal error whose queue never empties (serving it fails every time)."""

    def __len__(self) -> int:
        return 1

    def flush(self, timeout: float = 0.0) -> int:
        raise KafkaException("fatal error")

    poll = flush


class _Delivering:
    """A producer that delivers what it is given when served."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self._reports: list[Any] = []

    def __len__(self) -> int:
        return len(self._reports)

    def produce(self, topic: str, value: bytes, key: bytes | None = None, on_delivery: Any = None, **_: Any) -> None:
        self.sent.append(value)
        self._reports.append(on_delivery)

    def flush(self, timeout: float = 0.0) -> int:
        reports, self._reports = self._reports, []
        for report in reports:
            report(None, None)
        return 0

    poll = flush


def test_a_finished_producer_whose_queue_never_empties_is_replaced_not_waited_for(tmp_path):
    settings = parse_config(config_dict(tmp_path, bootstrap=NOWHERE))
    events = KafkaEventProducer(settings, retry_initial_s=0.01)
    events._producer, replacement = _Finished(), _Delivering()
    events._make = lambda: replacement
    events._unconfirmed[1] = ("journal", b"k", b"event")  # produced, never confirmed
    asyncio.run(asyncio.wait_for(events.delivered(), 10))
    assert replacement.sent == [b"event"] and events.undeliverable is None

    out = tmp_path / "out"
    out.mkdir()
    sender = KafkaRepartitionSender(parse_config(config_dict(out, bootstrap=NOWHERE, fileScope="window")))
    real, sender._producer = sender._producer, _Finished()
    with pytest.raises(RepartitionSendError, match="fatal error"):
        asyncio.run(asyncio.wait_for(sender.delivered(), 10))
    sender._producer = real
    sender.close()
