"""The Faust and aiokafka members that live/transport.py overrides or calls keep the shape it was
written against: an upgrade that changes them fails here in seconds, not in an e2e run."""

from __future__ import annotations

import inspect

import faust
from faust.transport.drivers import by_url
from faust.transport.drivers.aiokafka import Consumer

from stream_app.live.transport import CheckpointCommitConsumer, CheckpointCommitTransport


def _params(fn) -> list[str]:
    return list(inspect.signature(fn).parameters)


def test_the_transport_is_registered_through_faust_entry_points():
    assert by_url("streamapp://127.0.0.1:9092") is CheckpointCommitTransport


def test_overridden_consumer_members_keep_their_signatures():
    assert _params(Consumer._wait_next_records) == ["self", "timeout"]
    assert inspect.iscoroutinefunction(Consumer._wait_next_records)
    assert _params(Consumer._filter_tps_with_pending_acks) == ["self", "topics"]
    assert _params(Consumer._new_offset) == ["self", "tp"]
    assert _params(Consumer.highwaters) == ["self", "partitions"]
    assert inspect.iscoroutinefunction(Consumer.highwaters)
    for name in ("_wait_next_records", "_filter_tps_with_pending_acks", "_new_offset", "highwaters"):
        assert name in CheckpointCommitConsumer.__dict__  # still overridden here


def test_consumer_state_the_overrides_read_still_exists():
    from faust.transport.consumer import Consumer as BaseConsumer

    declared = {name for cls in BaseConsumer.__mro__ for name in getattr(cls, "__annotations__", {})}
    for attribute in ("_acked", "_acked_index", "flow_active"):
        assert attribute in declared, attribute
    assert hasattr(Consumer, "should_stop")
    assert faust.App.consumer_generation_id == 0  # declared on AppT, set by the consumer on each rebalance


def test_the_tested_faust_release():
    assert faust.__version__.startswith("0.15."), faust.__version__


def test_the_livelock_check_still_reads_the_inbound_time_the_runtime_feeds():
    from faust.sensors import Monitor
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    assert isinstance(Monitor().stream_inbound_time, dict)  # keyed by TP, monotonic seconds
    source = inspect.getsource(AIOKafkaConsumerThread.verify_event_path)
    assert "monitor.stream_inbound_time.get(tp)" in source and "SLOW_PROCESSING_STREAM_IDLE" in source


def test_readiness_reads_the_recovery_flag_faust_sets_while_tables_recover():
    """/readyz answers 503 while ``app.in_recovery`` (live/health.py not_ready_reason): Recovery
    still sets and clears that flag on the app."""
    from faust.tables.recovery import Recovery

    app = faust.App("contract-recovery")
    assert app.in_recovery is False
    source = inspect.getsource(Recovery)
    assert "self.app.in_recovery = True" in source and "self.app.in_recovery = False" in source


def test_the_stack_dump_the_worker_replaces_is_still_modes_sigusr1_handler():
    import mode

    assert inspect.iscoroutinefunction(mode.Worker._cry)
    assert "self._cry()" in inspect.getsource(mode.Worker._on_sigusr1)


def test_the_fetch_wait_is_set_where_aiokafka_reads_it():
    """FetchWaitConsumerThread sets ``_fetch_max_wait_ms`` on the consumer Faust created (with its
    fixed 1500 ms); aiokafka hands that attribute to its fetcher when the consumer starts."""
    from aiokafka import AIOKafkaConsumer
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    from stream_app.live.transport import FetchWaitConsumerThread

    assert "fetch_max_wait_ms=1500" in inspect.getsource(AIOKafkaConsumerThread._create_worker_consumer)
    assert _params(AIOKafkaConsumerThread._create_worker_consumer) == ["self", "transport"]
    assert "fetch_max_wait_ms=self._fetch_max_wait_ms" in inspect.getsource(AIOKafkaConsumer.start)
    assert "_create_worker_consumer" in FetchWaitConsumerThread.__dict__
    assert "_new_consumer_thread" in CheckpointCommitConsumer.__dict__
    assert _params(Consumer._new_consumer_thread) == ["self"]


def test_aiokafka_seeks_only_to_committed_offsets_above_zero():
    """Why CheckpointCommitConsumer.seek_to_committed rewinds partitions committed at 0 itself."""
    from aiokafka import AIOKafkaConsumer

    assert "if offset and offset > 0:" in inspect.getsource(AIOKafkaConsumer.seek_to_committed)
    assert _params(Consumer.seek_to_committed) == ["self"]
    assert inspect.iscoroutinefunction(Consumer.seek_to_committed)


def test_partitions_committed_at_zero_or_never_are_read_from_their_beginning(monkeypatch):
    """After a rebalance a gated partition (input or repartition) whose commit is 0 or missing
    is sought to its beginning; one with a commit was sought by aiokafka; Faust's own topics are
    left alone."""
    import asyncio
    from types import SimpleNamespace

    from aiokafka import TopicPartition

    from stream_app.live.transport import NOT_GATED

    committed = {TopicPartition("in", 0): 0, TopicPartition("in", 1): None, TopicPartition("in", 2): 7,
                 TopicPartition("app-files-repartition", 3): -1, TopicPartition("app-table-changelog", 0): 0}

    async def base_seek(self):
        return committed

    rewound: list = []

    async def seek_to_beginning(*tps):
        rewound.extend(tps)

    monkeypatch.setattr(Consumer, "seek_to_committed", base_seek)
    consumer = object.__new__(CheckpointCommitConsumer)
    consumer.__dict__.update(app=SimpleNamespace(
        stream_app_commit_gate=lambda topic, partition: NOT_GATED if "changelog" in topic else None),
        _thread=SimpleNamespace(seek_to_beginning=seek_to_beginning))
    assert asyncio.run(consumer.seek_to_committed()) == committed
    assert rewound == [TopicPartition("in", 0), TopicPartition("in", 1), TopicPartition("app-files-repartition", 3)]


def test_the_web_blueprints_the_worker_drops_are_where_it_reads_them():
    """serve_only_own_views filters BlueprintManager._enabled before the web server applies it:
    with the worker's settings nothing of Faust's own is left, only the app's pages."""
    import faust

    from stream_app.live.transport import serve_only_own_views

    app = faust.App("contract-web", broker="memory://", web_enabled=True, web_tables_enabled=False,
                    web_router_enabled=False)
    before = [bp for _, bp in app.web.blueprints._enabled]
    assert "faust.web.apps.production_index:blueprint" in before and app.web.blueprints.applied is False
    serve_only_own_views(app)
    assert app.web.blueprints._enabled == []


def test_the_subscription_the_worker_delays_is_the_consumer_threads():
    """``FetchWaitConsumerThread.subscribe`` waits for the topics in the cluster's metadata: Faust's
    consumer still subscribes through its thread, and aiokafka still reads the metadata it asks."""
    from aiokafka import AIOKafkaClient, AIOKafkaConsumer
    from aiokafka.cluster import ClusterMetadata
    from faust.transport.consumer import ThreadDelegateConsumer
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    from stream_app.live.transport import FetchWaitConsumerThread

    assert "self._thread.subscribe(topics=topics)" in inspect.getsource(ThreadDelegateConsumer.subscribe)
    assert _params(AIOKafkaConsumerThread.subscribe) == ["self", "topics"]
    assert inspect.iscoroutinefunction(AIOKafkaConsumerThread.subscribe)
    assert "subscribe" in FetchWaitConsumerThread.__dict__
    assert "self._client = AIOKafkaClient(" in inspect.getsource(AIOKafkaConsumer.__init__)
    assert inspect.iscoroutinefunction(AIOKafkaClient.fetch_all_metadata)
    assert _params(ClusterMetadata.partitions_for_topic) == ["self", "topic"]
