"""Which repartition record format: one Kafka record per routed record, or runs of them?

Measures, for the same routed records, the CPU of encoding and decoding each format (the
routing and the file stage pay these per record, in Python) and the rate at which
confluent-kafka produces it to a broker (the embedded one unless KAFKA_BOOTSTRAP_SERVERS is
set), and prints the figures.

    python bench/repartition_format.py [--records 200000] [--partitions 4]
"""

from __future__ import annotations

import argparse
import os
import struct
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stream_app.codecs.repartition import decode, encode_runs  # noqa: E402
from stream_app.core.routing import repartition_partition  # noqa: E402
from stream_app.core.windows import FileKey  # noqa: E402
from stream_app.tools.demo import encoded_matched_records  # noqa: E402

H6 = 6 * 3600 * 1000
_ONE = struct.Struct(">BBHiqqqqB")


def per_record(key: FileKey, source: tuple[str, int], offset: int, event_time: int, value: bytes) -> bytes:
    """The alternative: one Kafka record per routed record (the same fields, no run header)."""
    topic = source[0].encode()
    return _ONE.pack(1, 2, len(topic), source[1], key.window_start_ms, key.window_end_ms, offset, event_time,
                     0) + topic + value


def decode_per_record(payload: bytes) -> tuple:
    head = _ONE.unpack_from(payload, 0)
    start = _ONE.size + head[2]
    return head, payload[start:]


def consume_seconds(bootstrap: str, topic: str, expected: int) -> float:
    """CPU seconds aiokafka (the file stage's client, through Faust) spends fetching and parsing
    the topic: per Kafka record, in Python."""
    import asyncio

    from aiokafka import AIOKafkaConsumer

    async def run() -> float:
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                    enable_auto_commit=False, group_id=f"format-{uuid.uuid4().hex[:6]}",
                                    max_partition_fetch_bytes=8 * 1024 * 1024)
        await consumer.start()
        started, seen = time.process_time(), 0
        try:
            while seen < expected:
                batches = await consumer.getmany(timeout_ms=1000, max_records=20_000)
                seen += sum(len(records) for records in batches.values())
        finally:
            await consumer.stop()
        return time.process_time() - started

    return asyncio.run(run())


def produce_rate(bootstrap: str, messages: list[tuple[int, bytes, bytes]], partitions: int) -> tuple[float, str]:
    from confluent_kafka import Producer

    from stream_app.tools.broker import create_topics

    topic = f"repartition-format-{uuid.uuid4().hex[:6]}"
    create_topics(bootstrap, {topic: partitions})
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all",
                         "linger.ms": 5, "log_level": 3})
    started = time.perf_counter()
    for partition, key, value in messages:
        while True:
            try:
                producer.produce(topic, value, key, partition=partition)
                break
            except BufferError:
                producer.poll(0.05)
    producer.flush()
    return time.perf_counter() - started, topic


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--batch", type=int, default=10_000, help="records per routed batch (one fetch)")
    args = parser.parse_args()
    values = list(encoded_matched_records(args.records, seed=7))
    # the routed records of each batch: (file key, source, offset, event time, value)
    routed = []
    for i, value in enumerate(values):
        source = ("matched-records", i % args.partitions)
        event_time = 1_772_409_600_000 + i * 100
        start = event_time - event_time % H6
        routed.append((FileKey(None, None, start, start + H6), source, i // args.partitions, event_time, value))

    started = time.perf_counter()
    singles = [(repartition_partition(k, args.partitions), k.id.encode(), per_record(k, s, o, t, v))
               for k, s, o, t, v in routed]
    single_encode = time.perf_counter() - started
    started = time.perf_counter()
    for _, _, payload in singles:
        decode_per_record(payload)
    single_decode = time.perf_counter() - started

    started = time.perf_counter()
    runs = []
    for first in range(0, len(routed), args.batch):
        grouped: dict[tuple, list] = {}
        for k, s, o, t, v in routed[first:first + args.batch]:
            grouped.setdefault((k, s), []).append((o, t, v))
        for (k, s), records in grouped.items():
            partition = repartition_partition(k, args.partitions)
            runs.extend((partition, k.id.encode(), payload) for payload in encode_runs(k, s, records))
    runs_encode = time.perf_counter() - started
    started = time.perf_counter()
    for _, _, payload in runs:
        decode(payload)
    runs_decode = time.perf_counter() - started

    broker = None
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if not bootstrap:
        from stream_app.tools.broker import EmbeddedBroker

        broker = EmbeddedBroker()
        bootstrap = broker.start()
    try:
        single_produce, single_topic = produce_rate(bootstrap, singles, args.partitions)
        runs_produce, runs_topic = produce_rate(bootstrap, runs, args.partitions)
        single_consume = consume_seconds(bootstrap, single_topic, len(singles))
        runs_consume = consume_seconds(bootstrap, runs_topic, len(runs))
    finally:
        if broker is not None:
            broker.stop()
    n = args.records
    print(f"{n} routed records ({sum(len(v) for v in values) / 1e6:.1f} MB of Avro), {args.partitions} partitions, "
          f"batches of {args.batch}")
    print(f"{'format':<28} {'Kafka records':>13} {'MB':>7} {'encode us/rec':>14} {'decode us/rec':>14} "
          f"{'produce rec/s':>14} {'aiokafka read us/rec':>21}")
    for name, messages, enc, dec, prod, cons in (
            ("one Kafka record per record", singles, single_encode, single_decode, single_produce, single_consume),
            ("runs (format v1)", runs, runs_encode, runs_decode, runs_produce, runs_consume)):
        size = sum(len(m[2]) + len(m[1]) for m in messages) / 1e6
        print(f"{name:<28} {len(messages):>13} {size:>7.1f} {enc / n * 1e6:>14.2f} {dec / n * 1e6:>14.2f} "
              f"{n / prod:>14.0f} {cons / n * 1e6:>21.2f}")
    print("us/rec: per routed record; encode is the routing stage's, decode and the aiokafka read the file stage's")


if __name__ == "__main__":
    main()
