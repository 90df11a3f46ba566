"""A Faust Kafka transport: fetched batches go straight to the pipeline; commits follow checkpoints.

Faust hands every message to its streams one at a time (a task and a queue hop per message),
which caps a bare agent near 13k records/s.  This consumer takes the whole fetched batch of each
input partition out of the fetch loop and gives it to the pipeline in one call; other topics
(table changelogs during recovery) still take Faust's normal path.  Awaiting the pipeline inside
the fetch loop is also the backpressure: nothing more is fetched until the batch fetched before
this one is windowed (the runtime holds each batch until the next one is with the decode
helper), which waits for the finalize + commit of the batch before that.

Faust commits the highest run of acknowledged offsets.  Holding messages unacked until their
file is finalized would keep every message (with its value bytes) in memory for as long as a
window is open, which for a 6-hour window is unbounded.  Instead this consumer commits, per input
partition, exactly the offset of the last *confirmed* checkpoint: the lowest offset not yet in a
finalized file, written to the checkpoint table and acknowledged by the broker.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol

from aiokafka.errors import IllegalStateError, KafkaError
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from faust.transport.drivers.aiokafka import Consumer as AIOKafkaConsumer
from faust.transport.drivers.aiokafka import Transport as AIOKafkaTransport
from faust.types import TP

SCHEME = "streamapp"

log = logging.getLogger(__name__)

# (topic, partition) -> offset to commit, None for "nothing committable yet", or NOT_GATED for
# topics that are not pipeline inputs (Faust's own bookkeeping applies to them).
NOT_GATED = -1
CommitGate = Callable[[str, int], int | None]


class BatchIntake(Protocol):
    def takes(self, topic: str) -> bool: ...

    async def on_fetched(self, batches: Mapping[TP, Sequence[Any]], generation: int) -> None: ...


# Listed end offsets -> real end offsets (see CheckpointCommitConsumer.highwaters).
LogEndProbe = Callable[[dict[TP, int]], dict[TP, int]]


# How long a subscription waits for its topics to be in the cluster's metadata (see subscribe).
SUBSCRIBE_WAIT_S = 30.0


async def topics_missing_from_metadata(client: Any, topics: set[str], timeout_s: float,
                                       interval_s: float = 0.25) -> set[str]:
    """The topics an aiokafka client still finds no partitions of after up to ``timeout_s``
    (asking the cluster again every ``interval_s``); empty once every topic is listed."""
    deadline = time.monotonic() + timeout_s
    while True:
        remaining = deadline - time.monotonic()
        try:
            cluster = await asyncio.wait_for(client.fetch_all_metadata(), max(remaining, 0.1))
            missing = {topic for topic in topics if not cluster.partitions_for_topic(topic)}
        except (TimeoutError, KafkaError):  # the cluster is not answering (yet)
            missing = set(topics)
        if not missing or time.monotonic() >= deadline:
            return missing
        await asyncio.sleep(interval_s)


class FetchWaitConsumerThread(AIOKafkaConsumerThread):
    """Faust creates its aiokafka consumer with ``fetch_max_wait_ms=1500``, fixed.  aiokafka keeps
    one fetch in flight per broker, and it holds a fetch back for the broker while a partition
    of that broker still has fetched records to consume; so a drained busy partition waits for a
    long poll of the idle ones led by the same broker (measured: the file stage's partitions
    waited up to 1 s per fetch while the input partitions were at their end).  The wait is
    ``kafka.fetchMaxWaitMs`` instead (tests/live/test_faust_contract.py pins the attribute)."""

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        wait_ms: int | None = getattr(self.app, "stream_app_fetch_max_wait_ms", None)
        if wait_ms is not None:
            consumer._fetch_max_wait_ms = wait_ms  # read when the consumer starts its fetcher
        return consumer

    async def subscribe(self, topics: Iterable[str]) -> None:
        """Subscribe once the cluster's metadata lists every topic.  Faust creates the table
        changelog topics just before it subscribes, and a broker can answer a metadata request
        without a topic it has just created (Apache Kafka's KRaft broker applies it a moment
        after the controller acknowledged it).  The group leader then assigns without that
        topic (Faust's assignor logs "Ignoring missing topic"), and aiokafka asks again only
        after ``metadata.max.age.ms`` (5 minutes).  Until then that changelog's partitions are
        assigned to nobody, so no replica recovers that table: two workers on Apache Kafka left
        files unwritten for those 5 minutes (the routing checkpoints' changelog, in CI)."""
        wanted = set(topics)
        missing = await self.call_thread(self._topics_missing, wanted)
        if missing:
            log.warning("subscribing although the cluster lists no partitions of %s after %.0f s; they are "
                        "assigned once it does", ", ".join(sorted(missing)), SUBSCRIBE_WAIT_S)
        await super().subscribe(wanted)

    async def _topics_missing(self, topics: set[str]) -> set[str]:  # runs in the consumer thread
        return await topics_missing_from_metadata(self._ensure_consumer()._client, topics, SUBSCRIBE_WAIT_S)


class CheckpointCommitConsumer(AIOKafkaConsumer):
    def _new_consumer_thread(self) -> AIOKafkaConsumerThread:
        return FetchWaitConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def highwaters(self, *partitions: TP) -> Mapping[TP, int]:
        # Faust's table recovery reads each changelog up to the end offset the broker lists.  A
        # broker that lists a stale end (the embedded Tansu does) would make recovery stop early
        # and silently drop the newest facts and checkpoints; so the end is confirmed by reading.
        listed = dict(await super().highwaters(*partitions))
        probe: LogEndProbe | None = getattr(self.app, "stream_app_log_ends", None)
        if probe is None or not listed:
            return listed
        return await asyncio.to_thread(probe, listed)

    def _filter_tps_with_pending_acks(self, topics: Any = None) -> Iterator[TP]:
        # Faust only considers partitions with acked messages; input partitions have none (their
        # records never become events), so add every assigned input partition.
        gate: CommitGate | None = getattr(self.app, "stream_app_commit_gate", None)
        tps = set(super()._filter_tps_with_pending_acks(topics))
        if gate is not None:
            tps.update(tp for tp in self.assignment()
                       if gate(tp.topic, tp.partition) != NOT_GATED
                       and (topics is None or tp in topics or tp.topic in topics))
        return iter(tps)

    async def _wait_next_records(self, timeout: float) -> tuple[Any, set[TP] | None]:
        records, active = await super()._wait_next_records(timeout)
        intake: BatchIntake | None = getattr(self.app, "stream_app_intake", None)
        if not records or intake is None:
            return records, active
        taken = {tp: batch for tp, batch in records.items() if intake.takes(tp.topic)}
        if not taken:
            return records, active
        # While a rebalance is under way Faust drops what was fetched and later seeks every
        # partition back to its committed offset; do the same rather than process stale data.
        if self.flow_active and not self.should_stop:
            await intake.on_fetched(taken, self.app.consumer_generation_id)
        return {tp: batch for tp, batch in records.items() if tp not in taken}, active

    async def seek_to_committed(self) -> Mapping[TP, int]:
        """Faust seeks every partition to its committed offset after an assignment, so that what
        was fetched before the rebalance is read again.  aiokafka's ``seek_to_committed`` only
        seeks to an offset above 0: a partition committed at 0 (a checkpoint still at the start
        of its log: the first window not yet written) or never committed keeps the position this
        consumer fetched it to before the rebalance.  A replica that kept such a partition
        through a rebalance then skipped the records in front of that position: a window lost
        part of its records and never closed (seen when scaling 1 -> 3 replicas).  Those
        partitions are read from their beginning, where their checkpoints are."""
        committed = await super().seek_to_committed()
        gate: CommitGate | None = getattr(self.app, "stream_app_commit_gate", None)
        if gate is None:
            return committed
        rewind = [tp for tp, offset in committed.items()
                  if (offset is None or offset <= 0) and gate(tp.topic, tp.partition) != NOT_GATED]
        if rewind:
            await self._thread.seek_to_beginning(*rewind)
        return committed

    def owned_highwater(self, tp: TP) -> int | None:
        """The partition's high watermark, or None when it is not assigned here (any more).

        The aiokafka consumer runs in Faust's consumer thread, so a rebalance can take the
        partition between any check in the worker's loop and the read, and aiokafka's
        ``highwater`` then asserts ``Partition is not assigned`` (it crashed replicas on every
        rebalance): the assertion is that answer, not a bug."""
        try:
            return self.highwater(tp) if tp in self.assignment() else None
        except AssertionError:
            return None

    async def seek_owned(self, tp: TP, offset: int) -> bool:
        """Seek ``tp`` if it is still assigned here; False when a rebalance took it meanwhile."""
        try:
            if tp not in self.assignment():
                return False
            await self.seek(tp, offset)
        except (AssertionError, IllegalStateError):  # revoked between the check and the seek
            return False
        return True

    async def confirm_membership(self, tp: TP, offset: int) -> bool:
        """Commit ``offset`` (the partition's persisted checkpoint: no move) under this member's
        generation.  Kafka refuses a commit from a member the group has rebalanced without (a
        zombie after a session timeout or a frozen process) — False then, as it is when the
        partition is no longer assigned here."""
        if tp not in self.assignment():
            return False
        return bool(await self._commit({tp: offset}))

    def _new_offset(self, tp: TP) -> int | None:
        gate: CommitGate | None = getattr(self.app, "stream_app_commit_gate", None)
        offset = gate(tp.topic, tp.partition) if gate is not None else NOT_GATED
        if offset == NOT_GATED:
            return super()._new_offset(tp)
        # Acks of input partitions carry no meaning for commits: drop them so they do not pile up.
        self._acked[tp].clear()
        self._acked_index[tp].clear()
        return offset


class CheckpointCommitTransport(AIOKafkaTransport):
    """Registered as ``streamapp://`` through the ``faust.transports`` entry point (pyproject.toml)."""

    Consumer = CheckpointCommitConsumer


def serve_only_own_views(app: Any) -> None:
    """Drop the Faust views its settings cannot switch off (the production index at ``/``), so the
    web port serves only the pages the app registers (/metrics, /healthz, /readyz).  Faust's
    table and router views are off by their settings (web_tables_enabled, web_router_enabled),
    statistics and graph by not running in debug; this is the one left.  Reads
    ``BlueprintManager._enabled`` (faust 0.15: the blueprints applied when the server starts;
    tests/live/test_faust_contract.py pins it)."""
    manager = app.web.blueprints
    manager._enabled = [(prefix, bp) for prefix, bp in manager._enabled
                        if not (isinstance(bp, str) and bp.startswith("faust.web.apps."))]
