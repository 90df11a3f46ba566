"""The live runtime: fetched batches into the stages, backpressure, the tick, rebalances and health.

Commit discipline: the consumer (``live/transport.py``) commits exactly the confirmed checkpoint
of each partition, never an acked offset, so no message is held in memory while its window is
open; ``pipeline/committer.py`` owns the order of the durable steps before it."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import faust
from faust.transport.consumer import Consumer as FaustConsumer
from faust.types import TP as FaustTP

from stream_app.codecs.registry import RegistryUnavailable
from stream_app.config import AppSettings
from stream_app.core.records import RawRecord
from stream_app.core.windows import TP
from stream_app.delivery.deliverer import Deliverer
from stream_app.live.durability import LiveDurability
from stream_app.live.events import RETRY_INITIAL_S, EventPublisher, wait_to_redeliver
from stream_app.live.health import Health
from stream_app.live.lost_state import LostStateWatch
from stream_app.live.rebalance import Rebalancing
from stream_app.live.repartition import KafkaRepartitionSender
from stream_app.live.startup import BrokerProbe
from stream_app.live.tables import FaustOutboxStore, FaustStateStore
from stream_app.live.transport import (
    NOT_GATED,
    CheckpointCommitConsumer,
)
from stream_app.ops.metrics import Metrics
from stream_app.pipeline.committer import Committer
from stream_app.pipeline.files import FilePipeline
from stream_app.pipeline.journal import Journal, now_ms
from stream_app.pipeline.outbox import Outbox
from stream_app.pipeline.ports import RoutedRecordsLost
from stream_app.pipeline.routing import RoutingStage
from stream_app.pipeline.wiring import build_pipeline, build_routing, prepare_worker_spool

log = logging.getLogger(__name__)


HELD_IDLE_S = 1.0  # how long a held batch waits for the next fetch before a tick windows it


class LiveRuntime(Rebalancing):
    """Glue between Faust events and the pipeline: batching, acks, backpressure, timers."""

    def __init__(self, app: faust.App, settings: AppSettings, cluster: BrokerProbe | None = None) -> None:
        self._settings = settings
        self._app = app
        self.metrics = Metrics()
        self.publisher = EventPublisher(settings, self.metrics)
        self.state = FaustStateStore(app, settings)
        self.lost = LostStateWatch(cluster, self.state)
        self.pipeline: FilePipeline = build_pipeline(settings, self.state, self.publisher,
                                                     spool_dir=prepare_worker_spool(settings), metrics=self.metrics)
        # fileScope: window: the routing stage (input -> repartition topic); self.pipeline is then
        # the file stage (repartition topic -> files).  Both run in this process, in one group.
        self.repartition: KafkaRepartitionSender | None = None
        self.routing: RoutingStage | None = None
        self._repartition_topic: str | None = None
        if settings.worker.fileScope == "window":
            self.repartition = KafkaRepartitionSender(settings)
            self.routing = build_routing(settings, self.state, self.publisher, self.repartition)
            self._repartition_topic = settings.repartition_topic
        self._routing_commit_due = 0.0  # time.monotonic() of the next routing commit
        self._rewind_backoff_s = RETRY_INITIAL_S
        self.pipeline.confirm_owner = self._confirm_owner
        self._loop: asyncio.AbstractEventLoop | None = None  # the worker's, for _confirm_owner
        removed = self.pipeline.sink.discard_partials()
        if removed:
            log.info("discarded %d partial file(s) of an earlier run; their records are read again", removed)
        self._lock = asyncio.Lock()
        # The durable order (pipeline/committer.py) on Kafka's acknowledgements.  Its write lock is
        # held while one file is written: a revoke (which runs outside _lock, from the rebalance)
        # waits for that write instead of discarding the spool it reads, and the new owner is
        # assigned the partition only after this worker stopped writing its files.
        self.durability = LiveDurability(self.publisher, self.state, self.repartition,
                                         lambda: self._app.consumer.commit())
        # Delivery (delivery: in the config): files queued with their facts, uploaded beside the pipeline.
        self.outbox: Outbox | None = None
        self.deliverer: Deliverer | None = None
        self.delivery_owned: set[TP] = set()  # file-stage partitions assigned and recovered
        if settings.delivery.sftp:
            self.outbox = Outbox(FaustOutboxStore(app, settings, self.state), [d.name for d in settings.delivery.sftp],
                                 self.publisher, Journal(settings.workerId, settings.appId))
            self.deliverer = Deliverer(self.outbox, settings.delivery.sftp, settings.workerId, self.pipeline.sink,
                                       lambda: self.delivery_owned, self.metrics)
        self.committer = Committer(self.pipeline, self.routing, self.durability, self.outbox)
        # Partitions whose revoke deadline passed: a write of theirs still under way is not put in place.
        self._released: set[TP] = set()
        # The finalize + commit of the last processed batch, left running while the fetch loop
        # brings the next batch (whose decoding starts meanwhile); awaited before anything else.
        self._committing: asyncio.Task | None = None
        # The last fetched input batch, sent to the decode helper but not yet windowed: it is
        # windowed when the next batch arrives (or at the next tick), so that the helper reads the
        # next batch while the worker windows this one.  Batches are taken in fetch order (_intake).
        self._held: tuple[list[RawRecord], list[RawRecord], dict[tuple[str, int], int], Callable[[], bool]] | None = None
        self._intake = asyncio.Lock()
        self._held_at = 0.0  # time.monotonic() when the held batch was fetched
        self._max_buffered = settings.worker.maxBufferedRecords
        self._input_topics = frozenset(settings.kafka.inputTopics)
        self.health = Health(app, settings, self.pipeline, self.routing, self.publisher, self.repartition,
                             self.state, self.lost)

    # -- intake -----------------------------------------------------------------------------
    def takes(self, topic: str) -> bool:
        return topic in self._input_topics or topic == self._repartition_topic

    async def on_fetched(self, batches: Mapping[FaustTP, Sequence[Any]], generation: int) -> None:
        """A fetched batch per input partition (aiokafka records), straight from the fetch loop."""
        if self.lost.reason is not None:
            return  # nothing is processed into a cluster that lost this worker's state (read again after a restart)
        raws = [RawRecord(r.topic, r.partition, r.offset, r.timestamp, r.key, r.value, tuple(r.headers or ()))
                for records in batches.values() for r in records]
        consumer = cast(FaustConsumer, self._app.consumer)
        consumed = {(tp.topic, tp.partition): len(records) for tp, records in batches.items()}

        def still_current() -> bool:  # no rebalance since the fetch (Faust re-seeks after one)
            return self._app.consumer_generation_id == generation and consumer.flow_active

        inputs, routed = self._split(raws)
        # Repartition records are held too only when a prepare helper reads them ahead
        # (structured mode); otherwise they have nothing to decode ahead (codecs/carried.py)
        # and would only wait for the next fetch or tick.
        hold_routed = bool(routed) and self.pipeline.prepares_ahead
        async with self._intake:
            # read by the helpers while the held batch is windowed
            (self.routing or self.pipeline).prefetch(inputs)
            if hold_routed:
                self.pipeline.prefetch_routed(routed)
            held = self._held
            if inputs or hold_routed:
                self._held_at = time.monotonic()
                self._held = (inputs, routed if hold_routed else [],
                              {tp: n for tp, n in consumed.items()
                               if hold_routed or tp[0] != self._repartition_topic}, still_current)
            elif held is not None:
                self._held = None
            if held is not None:
                await self._process(*held)
            if routed and not hold_routed:
                await self._process([], routed, {tp: n for tp, n in consumed.items() if tp[0] == self._repartition_topic},
                                    still_current)

    def _split(self, raws: list[RawRecord]) -> tuple[list[RawRecord], list[RawRecord]]:
        """(input records, repartition records); the latter only with business files."""
        if self._repartition_topic is None:
            return raws, []
        return ([r for r in raws if r.topic != self._repartition_topic],
                [r for r in raws if r.topic == self._repartition_topic])

    async def _process_held(self) -> None:
        """Window the held batch now (the caller holds ``_intake``)."""
        held, self._held = self._held, None
        if held is not None:
            await self._process(*held)

    async def _process(self, raws: list[RawRecord], routed: list[RawRecord], consumed: Mapping[tuple[str, int], int],
                       still_current: Callable[[], bool]) -> None:
        delay = 0.5
        while True:
            try:
                await self._await_background_commit()
                async with self._lock:
                    if not still_current():
                        return
                    # Records processed before a failure are skipped on the retry (by offset).
                    if self.routing is None:
                        self.pipeline.process(raws, now_ms())
                    else:
                        if raws:
                            self.routing.process(raws, now_ms())
                        if routed:
                            self.pipeline.process_routed(routed, now_ms())
                break
            except RegistryUnavailable as exc:
                # Not the record's fault: hold the batch (no commit, no dead letter) and retry.
                log.warning("schema registry unavailable (%s); retrying in %.1f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
        # Faust's livelock check reads when a stream last took a record of a partition; these
        # records never enter a stream, so the runtime tells it, else it would report every
        # partition of a backlog as stuck (tests/live/test_faust_contract.py pins the field).
        inbound = self._app.monitor.stream_inbound_time
        now = time.monotonic()
        self.health.progressed()
        for (topic, partition), count in consumed.items():  # per batch, not per record
            self.metrics.records_consumed.labels(topic, str(partition)).inc(count)
            inbound[FaustTP(topic, partition)] = now
        self.publisher.log_dead_letters()
        # Finalized and committed in the background: the fetch loop returns for the next batch
        # at once, and every later step (next batch, tick, backpressure) awaits this one first.
        self._committing = asyncio.ensure_future(self._locked_commit_round())
        await self._apply_backpressure()

    async def _await_background_commit(self) -> None:
        """Wait for the background finalize + commit; its failure is raised here."""
        committing, self._committing = self._committing, None
        if committing is not None:
            await committing

    async def _locked_commit_round(self) -> None:
        async with self._lock:
            await self._commit_round()

    async def _apply_backpressure(self) -> None:
        """Hold the agent (so Faust stops fetching) while too many records are unfinalized."""
        if self.pipeline.buffered_records >= self._max_buffered:
            await self._await_background_commit()
        while self.pipeline.buffered_records >= self._max_buffered:
            async with self._lock:
                if not self.pipeline.failing and not self.pipeline.due_cuts(now_ms()):
                    if not self.pipeline.relieve_pressure():
                        return
                await self._commit_round()
            if self.pipeline.buffered_records >= self._max_buffered:
                await asyncio.sleep(0.1)

    # -- timer ------------------------------------------------------------------------------
    async def on_tick(self) -> None:
        self.lost.poll()
        if self.lost.reason is not None:
            return  # no file cut, no event, no commit: the worker waits for a person (docs/operations.md)
        # An idle input leaves a batch held: window it now.  If the fetch loop is windowing (or
        # waiting out a registry outage), it takes the held batch itself; the tick goes on.  A
        # batch held for less than HELD_IDLE_S waits for the next fetch: windowed by the tick, its
        # decoding would not overlap anything and the next batch would wait for it (measured:
        # between two fetches of a backlog, the tick took the held batch every other time).
        if not self._intake.locked() and time.monotonic() - self._held_at >= HELD_IDLE_S:
            async with self._intake:
                await self._process_held()
        await self._await_background_commit()
        async with self._lock:
            if self.routing is not None:
                self.committer.idle_closed(self.routing.close_idle(now_ms(), self.health.caught_up))
            self.pipeline.tick(now_ms(), self.health.caught_up)
            await self._commit_round()
            self.pipeline.update_gauges(now_ms())
            for tp in self.pipeline.partitions() + (self.routing.partitions() if self.routing else []):
                lag = self.health.lag(tp)
                if lag is not None:
                    self.metrics.consumer_lag.labels(self.health.stage_of(tp), tp[0], str(tp[1])).set(lag)

    # -- finalize + commit ------------------------------------------------------------------
    async def _commit_round(self, revoking: bool = False) -> None:
        """One round of the committer (pipeline/committer.py owns the order of the steps)."""
        self._loop = asyncio.get_running_loop()
        route = self.routing is not None and not revoking and (
            self.committer.announcements_pending or time.monotonic() >= self._routing_commit_due)
        if route:
            # At most once per commitIntervalMs: each routing commit waits for three round trips
            # (repartition acks, the checkpoint, the commit), which per batch would pace the stage.
            self._routing_commit_due = time.monotonic() + self._settings.kafka.commitIntervalMs / 1000
        done = await self.committer.commit(now_ms(), revoking=revoking, route=route)
        if done.routed_lost is not None:
            await self._rewind_routing(done.routed_lost)
        elif route:
            self._rewind_backoff_s = RETRY_INITIAL_S
        if done.committed or done.summary.files:
            self.health.progressed()

    async def _rewind_routing(self, failure: RoutedRecordsLost) -> None:
        """Repartition records were lost (a fatal producer error, e.g. a broker that fenced the
        producer after a restart): route again from the persisted checkpoints through a new
        producer, as a restart would, but in this process.  Nothing was committed past them."""
        assert self.routing is not None and self.repartition is not None
        self._rewind_backoff_s = await wait_to_redeliver(
            f"{failure}; routing again from the persisted checkpoints", self._rewind_backoff_s)
        self.repartition.restart()
        seek = self.routing.rewind()
        self._held = None  # fetched before the seek
        self.committer.forget_announcements()  # the rebuilt routers announce what their checkpoints closed
        consumer = cast(CheckpointCommitConsumer, self._app.consumer)
        sought = [tp for tp, offset in seek.items() if await consumer.seek_owned(FaustTP(*tp), offset)]
        self.routing.assign(sought, now_ms())

    def commit_gate(self, topic: str, partition: int) -> int | None:
        """What the consumer may commit for a partition: the persisted checkpoint."""
        if topic not in self._input_topics and topic != self._repartition_topic:
            return NOT_GATED
        if not self.lost.allows_commit():
            return None  # not recognised as the cluster this state belongs to: commit nothing
        if self.routing is not None and topic != self._repartition_topic:
            checkpoint = self.routing.persisted_checkpoint((topic, partition))
        else:
            checkpoint = self.pipeline.persisted_checkpoint((topic, partition))
        return checkpoint.offset if checkpoint is not None else None
