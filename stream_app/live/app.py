"""The live worker: a Faust app whose consumer hands fetched batches to the shared pipeline.

Commit discipline: after files are finalized the pipeline reports, per partition, the lowest
offset that is not yet in a finalized file; the runtime persists that checkpoint in a table.
The consumer (``live/transport.py``) commits exactly the confirmed checkpoint, never an acked
offset, so no message is held in memory while its window is open.  Each durable step (journal
event, window facts, checkpoint) is acknowledged by the broker before the next one is written
and before the commit (``pipeline/committer.py`` owns that order).
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
from functools import partial
from typing import Any

import faust
from faust.types import TP as FaustTP

from stream_app.config import AppSettings
from stream_app.live.credentials import faust_credentials
from stream_app.live.lost_state import LostStateWatch
from stream_app.live.runtime import LiveRuntime
from stream_app.live.startup import BrokerProbe
from stream_app.live.transport import (
    SCHEME,
    BatchIntake,
    CommitGate,
    LogEndProbe,
    serve_only_own_views,
)
from stream_app.ops.metrics import CONTENT_TYPE_LATEST
from stream_app.ops.security import confluent_security

log = logging.getLogger(__name__)



def real_log_ends(settings: AppSettings, listed: dict[FaustTP, int]) -> dict[FaustTP, int]:
    from stream_app.replay.reader import RangeReader

    reader = RangeReader({"bootstrap.servers": settings.kafka.bootstrapServers,
                          **confluent_security(settings.kafka.security)})
    try:
        ends = reader.log_ends({(tp.topic, tp.partition): offset for tp, offset in listed.items()})
    except Exception as exc:  # the broker went away meanwhile: Faust's own recovery handles that
        log.warning("could not confirm changelog end offsets (%s); using the listed ones", type(exc).__name__)
        return listed
    finally:
        reader.close()
    corrected = {tp: end for tp, end in ends.items() if end != max(listed[FaustTP(*tp)], 0)}
    if corrected:
        log.info("listed end offsets were stale for %d changelog partition(s); recovery reads to the real end",
                 len(corrected))
    return {FaustTP(*tp): end for tp, end in ends.items()}


class StreamApp(faust.App):
    """The Faust app with the hooks ``live/transport.py`` reads (typed, instead of attributes
    set on a plain app)."""

    stream_app_commit_gate: CommitGate | None = None
    stream_app_intake: BatchIntake | None = None
    stream_app_log_ends: LogEndProbe | None = None
    stream_app_fetch_max_wait_ms: int | None = None


def create_app(settings: AppSettings) -> tuple[StreamApp, LiveRuntime]:
    kafka = settings.kafka
    app = StreamApp(
        settings.appId,
        broker=[f"{SCHEME}://{host.strip()}" for host in kafka.bootstrapServers.split(",")],
        broker_credentials=faust_credentials(kafka.security),
        store="memory://",
        datadir=settings.dataDir or tempfile.mkdtemp(prefix=f"{settings.appId}-"),
        topic_partitions=kafka.topicPartitions,
        topic_replication_factor=kafka.replicationFactor,
        broker_session_timeout=kafka.sessionTimeoutMs / 1000,
        broker_rebalance_timeout=kafka.rebalanceTimeoutMs / 1000,
        broker_heartbeat_interval=kafka.heartbeatIntervalMs / 1000,
        broker_commit_interval=kafka.commitIntervalMs / 1000,
        consumer_auto_offset_reset="earliest",
        broker_max_poll_records=settings.worker.batchSize,  # records per fetched batch
        consumer_max_fetch_size=kafka.maxPartitionFetchBytes,
        producer_acks=-1,
        # room for a dead-letter envelope of maxMessageBytes and the request around it
        producer_max_request_size=max(1_000_000, kafka.maxMessageBytes + 65_536),
        stream_wait_empty=False,
        web_enabled=settings.webPort is not None,
        web_port=settings.webPort or 6066,
        web_bind=settings.webHost,
        # Faust serves its tables' contents (/table) and the cluster map (/router) on the web
        # port by default, without authentication: the port the chart exposes for Prometheus.
        web_tables_enabled=False,
        web_router_enabled=False,
        table_standby_replicas=0,
    )
    if settings.webPort is not None:
        serve_only_own_views(app)
    probe = BrokerProbe(settings)  # one client for every /readyz, and the cluster's identity
    runtime = LiveRuntime(app, settings, probe)
    app.stream_app_commit_gate = runtime.commit_gate  # read by CheckpointCommitConsumer
    app.stream_app_intake = runtime  # fetched input batches go to the runtime (live/transport.py)
    app.stream_app_fetch_max_wait_ms = kafka.fetchMaxWaitMs  # read by FetchWaitConsumerThread
    if kafka.confirmChangelogEnds:  # the embedded broker's stale listed ends (live/transport.py)
        app.stream_app_log_ends = partial(real_log_ends, settings)
    source = app.topic(*kafka.inputTopics, key_serializer="raw", value_serializer="raw")

    # The agents only subscribe the consumer to their topics: the consumer hands every fetched
    # batch of them to the runtime (runtime.on_fetched, live/transport.py), so no record ever
    # enters these streams.
    @app.agent(source, name="ingest")
    async def ingest(stream: faust.StreamT) -> None:
        async for _ in stream:
            raise RuntimeError("an input record reached the agent stream; the intake takes every fetched batch")

    @app.on_rebalance_complete.connect  # type: ignore[arg-type]  # mode's stubs reject any coroutine
    async def on_rebalance_complete(sender: Any, *args: Any, signal: Any = None, **kwargs: Any) -> None:
        await runtime.on_rebalance_complete()

    if runtime.routing is not None:
        repartition = app.topic(settings.repartition_topic, key_serializer="raw", value_serializer="raw",
                                partitions=kafka.repartition_partitions, internal=False)

        @app.agent(repartition, name="files")
        async def files(stream: faust.StreamT) -> None:
            async for _ in stream:
                raise RuntimeError("a repartition record reached the agent stream; the intake takes every batch")

    if runtime.deliverer is not None:
        deliverer = runtime.deliverer

        @app.task
        async def deliveries() -> None:
            await deliverer.run()

    @app.timer(interval=0.25, name="flush-timer")
    async def flush_timer() -> None:
        await runtime.on_tick()

    # Lost state is watched by a timer of its own: a tick can wait a long time for a commit round
    # (a durable step against a cluster re-created empty never completes), and the watch must
    # still see the new cluster and report it, so that nothing is committed there.
    @app.timer(interval=LostStateWatch.CHECK_S, name="lost-state-watch")
    async def lost_state_watch() -> None:
        runtime.lost.poll()

    @app.page("/metrics")
    async def metrics(web: Any, request: Any) -> Any:
        # aiohttp refuses a charset inside content_type; the exposition format is UTF-8 text
        return web.text(runtime.metrics.render().decode(), content_type=CONTENT_TYPE_LATEST.split(";")[0])

    @app.page("/healthz")
    async def healthz(web: Any, request: Any) -> Any:
        return web.json({"alive": True})

    @app.page("/readyz")
    async def readyz(web: Any, request: Any) -> Any:
        reason = runtime.health.not_ready_reason()
        if reason is None:
            problem = await asyncio.to_thread(probe.problem, 2.0)
            reason = f"Kafka unreachable: {problem}" if problem else None
        runtime.metrics.ready.set(0 if reason is not None else 1)  # as of the last probe
        if reason is not None:
            return web.json({"ready": False, "reason": reason}, status=503)
        return web.json({"ready": True})

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]  # mode's stubs reject any coroutine
    async def on_revoked(sender: Any, *args: Any, signal: Any = None, **kwargs: Any) -> None:
        await runtime.on_revoked(args[0] if args else kwargs["revoked"])

    return app, runtime
