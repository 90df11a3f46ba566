"""Losing the broker mid-run: no crash, not ready while it is gone, and it resumes exactly.

Each test runs on Tansu keeping its log in S3 (moto's server), so the broker can be stopped and
started again without losing the topics, and on Apache Kafka restarted on its log directory.
"""

from __future__ import annotations

import re
import signal
import time

import boto3
import pytest
from moto.server import ThreadedMotoServer

from stream_app.tools.broker import EmbeddedBroker, free_port
from tests.conftest import own_apache_kafka
from tests.harness import LiveWorker, avro_values, wait_for, worker_past_first_files
from tests.helpers import EMBEDDED_BOOTSTRAPS, write_config

pytestmark = pytest.mark.e2e
H = 3_600_000


@pytest.fixture(params=["embedded", "apache"])
def durable_broker(request, tmp_path, monkeypatch):
    """A broker that can be stopped and started again on the same log: Tansu keeping its log in
    S3 (moto's server), or Apache Kafka restarted on the same log directory."""
    if request.param == "apache":
        with own_apache_kafka(tmp_path / "apache-kafka") as kafka:
            yield kafka
        return
    moto_port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=moto_port, verbose=False)
    server.start()
    creds = {"AWS_ACCESS_KEY_ID": "tansu", "AWS_SECRET_ACCESS_KEY": "tansu", "AWS_DEFAULT_REGION": "us-east-1"}
    boto3.client("s3", endpoint_url=f"http://127.0.0.1:{moto_port}", region_name="us-east-1",
                 aws_access_key_id="tansu", aws_secret_access_key="tansu").create_bucket(Bucket="tansu")
    broker = EmbeddedBroker(log_file=tmp_path / "broker.log", storage="s3://tansu/",
                            env={**creds, "AWS_ENDPOINT": f"http://127.0.0.1:{moto_port}", "AWS_ALLOW_HTTP": "true"})
    broker.start()
    EMBEDDED_BOOTSTRAPS.add(broker.bootstrap)
    yield broker
    broker.stop()
    server.stop()


def test_broker_loss_mid_run_is_survived_and_output_is_identical(durable_broker, tmp_path):
    worker, values = worker_past_first_files(durable_broker.bootstrap, tmp_path)
    try:
        before = len(worker.log.read_text(errors="replace").splitlines())
        durable_broker.stop()
        status, body = wait_for(lambda: (lambda r: r if r and r[0] == 503 else None)(worker.readiness()),
                                30, what="not-ready while the broker is gone")
        assert "Kafka unreachable" in body["reason"]
        time.sleep(8)
        assert worker.proc.poll() is None  # no crash
        outage = [line for line in worker.log.read_text(errors="replace").splitlines()[before:]
                  if "[WARNING]" in line or "[ERROR]" in line]
        durable_broker.start()
        worker.produce(values[20:])
        wait_for(lambda: worker.committed()[0] == 40, 120, what="processing resumed after the broker came back")
        assert wait_for(lambda: (lambda r: r if r and r[0] == 200 else None)(worker.readiness()), 30)
    finally:
        worker.stop()
    assert len(worker.assert_reference_files(tmp_path)) == 4
    # quiet outage: each kind of client-library line (per node or partition) at most once per
    # backoff step (1, 2, 4, 8 s: at most 5 in this outage), instead of hundreds of lines
    kinds: dict[str, int] = {}
    for line in outage:
        kind = re.sub(r"\d+", "N", line.split("] ", 3)[-1])[:80]
        kinds[kind] = kinds.get(kind, 0) + 1
    assert len(outage) < 60 and max(kinds.values(), default=0) <= 5 * 4, (len(outage), kinds)


def test_events_undelivered_while_the_broker_is_gone_are_produced_again_never_raised(durable_broker, tmp_path):
    """The journal/dead-letter producer: a delivery that fails (the broker away longer than
    librdkafka's message timeout) is reported as undeliverable and produced again once the
    broker is back; delivered() returns only then, and never raises."""
    import asyncio

    from stream_app.config import parse_config
    from stream_app.live.events import KafkaEventProducer
    from stream_app.tools.broker import create_topics
    from tests.helpers import config_dict

    topic = "events-under-outage"
    create_topics(durable_broker.bootstrap, {topic: 2})
    settings = parse_config(config_dict(tmp_path, bootstrap=durable_broker.bootstrap))
    producer = KafkaEventProducer(settings, retry_initial_s=0.5, message_timeout_ms=3000)

    async def scenario() -> list[str | None]:
        for i in range(20):
            producer.produce(topic, f"k{i}".encode(), f"before-{i}".encode())
        await producer.delivered()
        durable_broker.stop()
        for i in range(20):
            producer.produce(topic, f"k{i}".encode(), f"during-{i}".encode())
        waiting = asyncio.ensure_future(producer.delivered())
        seen: list[str | None] = []
        for _ in range(200):
            await asyncio.sleep(0.1)
            seen.append(producer.undeliverable)
            if producer.undeliverable:
                break
        assert not waiting.done()
        await asyncio.to_thread(durable_broker.start)
        await asyncio.wait_for(waiting, 120)
        return seen

    seen = asyncio.run(scenario())
    assert any(seen) and producer.undeliverable is None
    producer.close()
    from confluent_kafka import Consumer

    consumer = Consumer({"bootstrap.servers": durable_broker.bootstrap, "group.id": "check-events",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topic])
    values: set[bytes] = set()
    deadline = time.monotonic() + 60
    while len(values) < 40 and time.monotonic() < deadline:
        msg = consumer.poll(1.0)
        if msg is not None and msg.error() is None:
            values.add(msg.value())
    consumer.close()
    assert values == {f"before-{i}".encode() for i in range(20)} | {f"during-{i}".encode() for i in range(20)}


def test_business_files_survive_a_broker_restart_without_a_crash(durable_broker, tmp_path):
    """Window scope: after the broker restarts, the repartition producer meets a broker that
    fenced its idempotent producer id.  The worker never exits: the routing stage rewinds to its
    persisted checkpoints and routes again, the file stage drops what it already had, and the
    files of every closed window equal the reference."""
    hour = 3_600_000
    worker = LiveWorker(durable_broker.bootstrap, tmp_path, partitions=2, fileScope="window",
                        fileNameTemplate="B_{{ window_start | ts('%Y%m%dT%H%M') }}_{{ '%03d' % part }}.txt",
                        maxRecordsPerFile=50,
                        window={"sizeMs": hour, "graceMs": 10 * 60_000, "idleTimeoutMs": 600_000})
    worker.enable_web()
    values = avro_values(400, span_hours=4)  # windows 0-2 close by watermark, window 3 stays open
    worker.produce(values[:200])
    worker.start()
    try:
        worker.wait_for(lambda: len(worker.files()) >= 2, 90, what="the files of the first window")
        durable_broker.stop()
        wait_for(lambda: (lambda r: r if r and r[0] == 503 else None)(worker.readiness()), 30,
                 what="not-ready while the broker is gone")
        time.sleep(5)
        durable_broker.start()
        worker.produce(values[200:])
        # windows 0-2 close by watermark: two files each
        worker.wait_for(lambda: len(worker.files()) >= 6, 150, what="the files after the restart")
        time.sleep(2)
        assert worker.proc.poll() is None, "the worker exited"
    finally:
        worker.stop()
    log = worker.log.read_text(errors="replace")
    assert "Crashed" not in log and "Traceback" not in log
    reference = worker.reference_files(tmp_path)
    files = worker.files()
    worker.assert_reference_files(tmp_path, {name: reference[name] for name in files if name in reference}, files)


@pytest.fixture(params=["embedded", "apache"])
def wipeable_broker(request, tmp_path):
    """A broker that can come back empty at the same address: Tansu on memory storage restarted
    (a new cluster id each start), or Apache Kafka re-formatted."""
    if request.param == "apache":
        with own_apache_kafka(tmp_path / "apache-kafka") as kafka:
            yield kafka
        return
    broker = EmbeddedBroker(log_file=tmp_path / "broker.log")
    broker.start()
    EMBEDDED_BOOTSTRAPS.add(broker.bootstrap)

    def wipe() -> None:
        broker.stop()
        broker.start()

    broker.wipe = wipe  # type: ignore[attr-defined]
    yield broker
    broker.stop()


def test_a_cluster_that_comes_back_empty_is_lost_state_and_nothing_is_committed_past_the_files(
        wipeable_broker, tmp_path):
    """The cluster is re-created empty while the worker runs (topics, committed offsets and the
    routed records gone; the input produced again at the same offsets).  The worker reports lost
    state (/readyz, one ERROR), stays up, and commits nothing on the new cluster: its input
    offsets there never pass what the files hold.  A restart then writes every file again."""
    from stream_app.tools.broker import create_topics

    worker = LiveWorker(wipeable_broker.bootstrap, tmp_path, partitions=2, fileScope="window",
                        fileNameTemplate="B_{{ window_start | ts('%Y%m%dT%H%M') }}_{{ '%03d' % part }}.txt",
                        maxRecordsPerFile=1000, window={"sizeMs": H, "graceMs": 100 * H, "idleTimeoutMs": 600_000})
    worker.enable_web()
    values = avro_values(200, seed=3, span_hours=3.5)
    worker.produce(values)
    worker.start()
    try:
        # every record routed (the input committed at its end), no window closed: in no file yet
        worker.wait_for(lambda: worker.committed() == {0: 100, 1: 100}, 120, what="the input routed")
        assert not worker.files()
        # The cluster comes back holding its topics before the worker looks again: a worker that
        # asked first would have the broker create the input topic (on first use, with the
        # broker's own partition count) before the operator's 2 partitions.
        assert worker.proc is not None
        worker.proc.send_signal(signal.SIGSTOP)
        try:
            wipeable_broker.wipe()
            create_topics(wipeable_broker.bootstrap, {worker.topic: 2, worker.journal_topic: 1, worker.dead_topic: 1})
        finally:
            worker.proc.send_signal(signal.SIGCONT)
        worker.produced, worker._next_offset = [], [0, 0]
        worker.produce(values)  # the same records at the same offsets
        status, body = worker.wait_for(
            lambda: (lambda r: r if r and r[0] == 503 and "lost state" in r[1]["reason"] else None)(
                worker.readiness()), 90, what="lost state reported")
        assert "cluster" in body["reason"]
        time.sleep(6)  # what it would commit on the new cluster, it has committed by now
        assert worker.proc is not None and worker.proc.poll() is None  # up, not crash-looping
        assert all(offset < 0 for offset in worker.committed().values()), worker.committed()
        assert not worker.files()
    finally:
        worker.stop()
    assert worker.log.read_text(errors="replace").count("the cluster lost state") == 1
    # the runbook (docs/operations.md): restart with a new appId; it reads the input from its
    # beginning and writes every file, as the core makes them
    worker.config_data["worker"]["window"]["idleTimeoutMs"] = 3000
    worker.app_id = worker.config_data["appId"] = f"{worker.app_id}-after"
    write_config(worker.config_path, worker.config_data)
    worker.start()
    try:
        worker.wait_for(lambda: worker.committed() == {0: 100, 1: 100} and len(worker.files()) >= 4, 120,
                        what="every file after the restart")
        worker.wait_for(lambda: worker.files() == worker.reference_files(tmp_path), 60, what="the reference files")
    finally:
        worker.stop()
