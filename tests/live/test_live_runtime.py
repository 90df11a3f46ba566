"""The live runtime without a broker: how a rebalance meets a file that is being written."""

from __future__ import annotations

import asyncio
import threading

from faust.types import TP as FaustTP

from stream_app.config import parse_config
from stream_app.live import runtime as live_runtime
from stream_app.live.app import create_app
from tests.helpers import config_dict
from tests.pipeline.test_files import raws


def _acked_without_a_broker(runtime, monkeypatch) -> None:
    """The durable steps (delivery acks, the commit) succeed at once: this test has no broker."""

    async def durable() -> None:
        return None

    monkeypatch.setattr(runtime.durability, "events_delivered", durable)
    monkeypatch.setattr(runtime.durability, "state_delivered", durable)
    monkeypatch.setattr(runtime.durability, "commit_offsets", durable)
    monkeypatch.setattr(runtime.pipeline, "confirm_owner", lambda tp, name: None)  # the broker's ownership check
    monkeypatch.setattr(runtime.lost, "cluster", None)  # no cluster identity to confirm (test_cluster_identity_gates_commits)


def test_a_revoke_waits_for_the_write_under_way_and_never_pulls_its_spool(tmp_path, monkeypatch):
    out, spool = tmp_path / "out", tmp_path / "spool"
    out.mkdir()
    data = config_dict(out, streamingAppendEnabled=True, maxRecordsPerFile=10, window={"sizeMs": 86_400_000})
    data.update(spoolDir=str(spool), dataDir=str(tmp_path / "faust"))
    app, runtime = create_app(parse_config(data))
    pipeline = runtime.pipeline
    started, release = threading.Event(), threading.Event()
    write_cut = pipeline.write_cut

    def slow_write(cut):  # a slow disk: the rebalance arrives while the part is being written
        started.set()
        release.wait(10)
        return write_cut(cut)

    monkeypatch.setattr(pipeline, "write_cut", slow_write)
    _acked_without_a_broker(runtime, monkeypatch)
    pipeline.process(raws(10), 0)  # one full part: a cut to write, its records only in the spool

    async def rebalance_during_write() -> None:
        flush = asyncio.create_task(runtime._commit_round())
        while not started.is_set():
            await asyncio.sleep(0.01)
        revoke = asyncio.create_task(runtime.on_revoked([FaustTP("in", 0)]))
        await asyncio.sleep(0.2)
        assert not revoke.done()  # the partition moves only after the write
        assert list(spool.rglob("*.spool"))  # and the part's records are still there to write
        release.set()
        await flush
        await revoke

    asyncio.run(rebalance_during_write())
    assert [p.name for p in out.glob("F_*")] and not list(spool.rglob("*.spool"))
    assert pipeline.partitions() == []  # revoked once the write was done


class _Fetched:
    """A record as aiokafka's fetcher hands it to the intake (the fields on_fetched reads)."""

    def __init__(self, raw) -> None:
        self.topic, self.partition, self.offset, self.key, self.value = (raw.topic, raw.partition, raw.offset,
                                                                         raw.key, raw.value)
        self.timestamp, self.headers = None, None


def test_a_fetched_batch_is_windowed_once_the_next_is_with_the_decode_helper(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    data = config_dict(out, window={"sizeMs": 86_400_000})
    data.update(dataDir=str(tmp_path / "faust"))
    app, runtime = create_app(parse_config(data))
    pipeline = runtime.pipeline
    steps: list[tuple[str, int]] = []
    prefetch, process = pipeline.prefetch, pipeline.process

    def prefetching(batch):
        steps.append(("prefetch", batch[0].offset))
        prefetch(batch)

    def windowing(batch, now):
        steps.append(("window", batch[0].offset))
        process(batch, now)

    monkeypatch.setattr(pipeline, "prefetch", prefetching)
    monkeypatch.setattr(pipeline, "process", windowing)
    _acked_without_a_broker(runtime, monkeypatch)
    monkeypatch.setattr(runtime.health, "lag", lambda tp: None)
    records = raws(30)
    tp = FaustTP("in", 0)

    def fetched(first: int, last: int) -> dict:
        return {tp: [_Fetched(raw) for raw in records[first:last]]}

    async def fetch_loop() -> None:
        generation = app.consumer_generation_id
        await runtime.on_fetched(fetched(0, 10), generation)
        assert steps == [("prefetch", 0)]  # held: the helper reads it while the worker waits for more
        await runtime.on_fetched(fetched(10, 20), generation)
        assert steps == [("prefetch", 0), ("prefetch", 10), ("window", 0)]
        assert pipeline.buffered_records == 10
        # held for less than HELD_IDLE_S: it waits for the next fetch (an hour, so that a loaded
        # machine's pause between the fetch and the tick cannot pass it)
        monkeypatch.setattr(live_runtime, "HELD_IDLE_S", 3600.0)
        await runtime.on_tick()
        assert steps[-1] == ("window", 0) and pipeline.buffered_records == 10
        monkeypatch.setattr(live_runtime, "HELD_IDLE_S", 0.0)
        await runtime.on_tick()  # nothing more fetched: the tick windows the held batch
        assert steps[-1] == ("window", 10) and pipeline.buffered_records == 20
        # Fetched together, a tick and the next batch: still windowed in fetch order.
        await asyncio.gather(runtime.on_fetched(fetched(20, 30), generation), runtime.on_tick())
        await runtime.on_tick()
        assert [offset for step, offset in steps if step == "window"] == [0, 10, 20]
        assert pipeline.buffered_records == 30
        # A rebalance drops a held batch: Faust seeks back to the committed offsets after it.
        await runtime.on_fetched(fetched(20, 30), generation)
        await runtime.on_revoked([tp])
        await runtime.on_tick()
        assert [offset for step, offset in steps if step == "window"] == [0, 10, 20]
        # The fetch loop busy windowing (or waiting out a registry outage): ticks do not wait for
        # it, so windows still close on time meanwhile.
        async with runtime._intake:
            await asyncio.wait_for(runtime.on_tick(), 5)

    asyncio.run(fetch_loop())


def test_the_changelog_end_probe_is_an_embedded_broker_setting(tmp_path):
    """Off by default (a real cluster lists true ends); on, table recovery confirms them."""
    for enabled in (False, True):
        data = config_dict(tmp_path, window={"sizeMs": 86_400_000})
        data["kafka"]["confirmChangelogEnds"] = enabled
        data["dataDir"] = str(tmp_path / f"faust-{enabled}")
        app, _ = create_app(parse_config(data))
        assert (app.stream_app_log_ends is not None) is enabled
    assert parse_config(config_dict(tmp_path) | {"kafka": {"bootstrapServers": "x:1", "inputTopics": ["in"]}}) \
        .kafka.confirmChangelogEnds is False


def test_the_readiness_probe_reuses_one_client_and_caches_its_answer(tmp_path):
    import time

    from stream_app.live.startup import BrokerProbe

    data = config_dict(tmp_path)
    data["kafka"]["bootstrapServers"] = "127.0.0.1:9"  # nothing listens
    probe = BrokerProbe(parse_config(data), ttl_s=30)
    client = probe._admin
    first = probe.problem(timeout_s=0.5)
    started = time.monotonic()
    assert first and probe.problem(timeout_s=0.5) == first and time.monotonic() - started < 0.1
    assert probe._admin is client


def test_processed_batches_feed_faust_s_livelock_check(tmp_path, monkeypatch):
    """Records taken from the fetch loop never enter a stream: the runtime stamps the partition's
    inbound time, so Faust's livelock check does not call a busy partition stuck."""
    out = tmp_path / "out"
    out.mkdir()
    data = config_dict(out, maxRecordsPerFile=1000, window={"sizeMs": 86_400_000})
    data.update(dataDir=str(tmp_path / "faust"))
    app, runtime = create_app(parse_config(data))
    _acked_without_a_broker(runtime, monkeypatch)
    assert FaustTP("in", 0) not in app.monitor.stream_inbound_time
    batch = raws(5)

    async def process() -> None:
        await runtime._process(batch, [], {("in", 0): len(batch)}, lambda: True)
        await runtime._await_background_commit()

    asyncio.run(process())
    import time

    assert 0 <= time.monotonic() - app.monitor.stream_inbound_time[FaustTP("in", 0)] < 5


def test_a_failed_changelog_send_is_sent_again_with_the_table_s_value_never_raised():
    from stream_app.live.tables import InFlight

    async def scenario() -> tuple[list[str], str | None, str | None]:
        loop = asyncio.get_running_loop()
        table = {"k": "v1"}
        sent: list[str] = []

        def send(value: str, fail: bool) -> asyncio.Future:
            sent.append(value)
            future = loop.create_future()
            if fail:
                future.set_exception(RuntimeError("UnknownError"))
            else:
                future.set_result(None)
            return future

        flight = InFlight()
        flight.add(send("v1", fail=True), lambda: send(table["k"], fail=False))
        table["k"] = "v2"  # updated meanwhile: the changelog must end with v2
        seen: list[str | None] = []

        async def watch() -> None:
            while True:
                seen.append(flight.undeliverable)
                await asyncio.sleep(0.05)

        watcher = asyncio.ensure_future(watch())
        await flight.delivered()
        watcher.cancel()
        return sent, next((s for s in seen if s), None), flight.undeliverable

    sent, reported, after = asyncio.run(scenario())
    assert sent == ["v1", "v2"]
    assert reported is not None and "UnknownError" in reported and after is None


def test_a_revoke_lets_the_file_under_way_finish_its_durable_steps_and_commit_first(tmp_path, monkeypatch):
    """One replica per file: the partition moves only after the file being written has its
    journal event, facts and checkpoint, and the commit, so its new owner does not write it again."""
    out = tmp_path / "out"
    out.mkdir()
    data = config_dict(out, maxRecordsPerFile=10, window={"sizeMs": 86_400_000})
    data.update(dataDir=str(tmp_path / "faust"))
    app, runtime = create_app(parse_config(data))
    pipeline = runtime.pipeline
    started, release = threading.Event(), threading.Event()
    write_cut = pipeline.write_cut

    def slow_write(cut):
        started.set()
        release.wait(10)
        return write_cut(cut)

    monkeypatch.setattr(pipeline, "write_cut", slow_write)
    _acked_without_a_broker(runtime, monkeypatch)
    committed: list[int | None] = []

    async def commit() -> None:
        committed.append(runtime.commit_gate("in", 0))

    monkeypatch.setattr(runtime.durability, "commit_offsets", commit)
    pipeline.process(raws(10), 0)

    async def rebalance_during_write() -> None:
        runtime._committing = asyncio.ensure_future(runtime._locked_commit_round())
        while not started.is_set():
            await asyncio.sleep(0.01)
        revoke = asyncio.create_task(runtime.on_revoked([FaustTP("in", 0)]))
        await asyncio.sleep(0.2)
        assert not revoke.done()
        release.set()
        await revoke

    asyncio.run(rebalance_during_write())
    assert committed == [10]  # committed past the file before the partition was let go
    assert pipeline.partitions() == []


def test_the_watchdog_reports_a_stage_that_makes_no_progress_with_work_pending(tmp_path):
    import time

    out = tmp_path / "out"
    out.mkdir()
    data = config_dict(out, maxRecordsPerFile=10, window={"sizeMs": 86_400_000}, stallTimeoutMs=60_000)
    data.update(dataDir=str(tmp_path / "faust"))
    app, runtime = create_app(parse_config(data))
    assert runtime.health.stalled_for_s() is None  # just started
    runtime.health.progress_at = time.monotonic() - 120
    assert runtime.health.stalled_for_s() is None  # idle, but nothing to do: not a stall
    runtime.pipeline.process(raws(10), 0)  # a part waits to be written
    stalled = runtime.health.stalled_for_s()
    assert stalled is not None and stalled >= 120
    runtime.health.progress_at = time.monotonic()
    assert runtime.health.stalled_for_s() is None


def test_committed_offsets_ahead_of_the_checkpoints_are_reported_as_lost_state(tmp_path, monkeypatch):
    """The worker commits only up to persisted checkpoints: a committed offset above one means
    the cluster lost state (or another group committed), reported instead of committed over."""
    from stream_app.core.windows import Checkpoint

    out = tmp_path / "out"
    out.mkdir()
    data = config_dict(out)
    data.update(dataDir=str(tmp_path / "faust"))
    app, runtime = create_app(parse_config(data))
    checkpoints = {("in", 0): Checkpoint(100, None)}
    monkeypatch.setattr(runtime.state, "get_checkpoint", lambda tp: checkpoints.get(tp))
    assert runtime.lost.check_committed({("in", 0): 100}) is None  # what the worker itself commits
    assert runtime.lost.check_committed({("in", 0): 40}) is None  # behind: re-read, duplicates skipped
    reason = runtime.lost.check_committed({("in", 0): 150, ("in", 1): 7})
    assert reason is not None and "in/0 committed 150, checkpoint 100" in reason and "in/1 committed 7" in reason
    assert runtime.health.not_ready_reason() == reason


def test_a_repartition_send_after_a_fatal_producer_error_is_reported_by_delivered_not_raised(tmp_path):
    """Routing sends many records per batch: a fatal producer error seen mid-batch (librdkafka's
    produce then raises) must not crash the fetch loop; delivered() reports it, and the routing
    stage routes again from its checkpoints (tests/e2e/test_business_files_e2e.py)."""
    from confluent_kafka import KafkaError, KafkaException

    from stream_app.live.repartition import KafkaRepartitionSender, RepartitionSendError

    out = tmp_path / "out"
    out.mkdir()
    sender = KafkaRepartitionSender(parse_config(config_dict(out, fileScope="window")))

    class FatalProducer:
        produced = 0

        def produce(self, *args, **kwargs):
            self.produced += 1
            raise KafkaException(KafkaError(KafkaError._FATAL, "fenced", fatal=True))

        def poll(self, timeout):
            return 0

        def flush(self, timeout):
            return 0

        def __len__(self):
            return 0

    producer = FatalProducer()
    sender._producer = producer
    sender.send(0, b"k", b"v")  # no raise
    sender.send(1, b"k", b"v")  # nothing more after the failure
    assert producer.produced == 1
    try:
        asyncio.run(sender.delivered())
    except RepartitionSendError as exc:
        assert "send refused" in str(exc)
    else:
        raise AssertionError("delivered() did not report the refused send")
    sender.restart()
    assert sender._broken is None


def test_the_consumer_faust_creates_fetches_with_kafka_fetch_max_wait_ms(tmp_path):
    """Faust fixes fetch_max_wait_ms at 1500; the worker's consumer gets kafka.fetchMaxWaitMs."""
    out = tmp_path / "out"
    out.mkdir()
    settings = parse_config({**config_dict(out), "kafka": {**config_dict(out)["kafka"], "fetchMaxWaitMs": 40}})

    async def created() -> int:
        app, _ = create_app(settings)
        thread = app.consumer._new_consumer_thread()
        consumer = thread._create_worker_consumer(app.transport)
        return consumer._fetch_max_wait_ms

    assert asyncio.run(created()) == 40


def test_periodic_work_reads_only_partitions_owned_at_that_moment(tmp_path, monkeypatch):
    """A tick (idle close, lag gauges), the watchdog and readiness may run mid-rebalance, for
    routers of partitions just revoked: aiokafka's highwater() asserts 'Partition is not
    assigned' for those (it crashed replicas on every rebalance); they count as not owned."""
    from faust.types import TP as FaustTP

    out = tmp_path / "out"
    out.mkdir()
    data = config_dict(out, fileScope="window", fileNameTemplate="B_{{ window_start | ts('%H') }}_{{ part }}.txt",
                       window={"sizeMs": 3_600_000, "graceMs": 0, "idleTimeoutMs": 100})
    data.update(dataDir=str(tmp_path / "faust"))
    app, runtime = create_app(parse_config(data))
    consumer = app.consumer
    owned: set = set()

    def highwater(tp):  # aiokafka's check, made in its own thread
        assert tp in owned, "Partition is not assigned"
        return 10

    monkeypatch.setattr(consumer, "assignment", lambda: set(owned))
    monkeypatch.setattr(consumer, "highwater", highwater)
    assert runtime.routing is not None
    runtime.routing.assign([("in", 0)], 0)  # routed before the revoke took it
    assert runtime.health.lag(("in", 0)) is None and not runtime.health.caught_up(("in", 0))
    asyncio.run(runtime.on_tick())  # no AssertionError; nothing idle-closed for a partition not owned
    assert runtime.routing.close_idle(10**13, runtime.health.caught_up) == []
    assert runtime.health.stalled_for_s() is None
    owned.add(FaustTP("in", 0))
    assert runtime.health.lag(("in", 0)) == 10  # owned: its lag is read
    monkeypatch.setattr(consumer, "assignment", lambda: {FaustTP("in", 0)})  # revoked between check and read
    owned.clear()
    assert runtime.health.lag(("in", 0)) is None


def test_cluster_identity_gates_commits(tmp_path):
    """Commits wait until the cluster is recognised (no broker answered: nothing committed); a
    cluster answering with another id is lost state, and nothing is committed again."""
    out = tmp_path / "out"
    out.mkdir()
    data = config_dict(out, maxRecordsPerFile=10, window={"sizeMs": 86_400_000})
    data.update(dataDir=str(tmp_path / "faust"))
    app, runtime = create_app(parse_config(data))
    runtime.pipeline.process(raws(10), 0)
    from stream_app.core.windows import Checkpoint

    runtime.pipeline.persisted_checkpoint = lambda tp: Checkpoint(10, 0)  # type: ignore[method-assign]
    assert runtime.lost.cluster is not None and runtime.commit_gate("in", 0) is None  # never confirmed (no broker)
    runtime.lost.cluster._observe("cluster-a")
    assert runtime.commit_gate("in", 0) == 10
    runtime.lost.cluster._observe("cluster-b")  # the same address, another cluster
    runtime.lost.note_cluster_change()
    assert runtime.lost.reason is not None and "cluster-b, not cluster-a" in runtime.lost.reason
    assert runtime.commit_gate("in", 0) is None and runtime.health.not_ready_reason() == runtime.lost.reason
