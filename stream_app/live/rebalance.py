"""The runtime's side of a rebalance: a revoke lets the file under way finish its durable steps
(or not be put in place), an assignment checks for lost state and routes every assigned input
partition, and the ownership probe runs before each file is put in place.

Mixed into ``LiveRuntime`` (``live/runtime.py``), whose state it shares: the attributes below.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import cast

import faust
from faust.types import TP as FaustTP

from stream_app.config import AppSettings
from stream_app.core.records import RawRecord
from stream_app.core.windows import TP
from stream_app.delivery.deliverer import Deliverer
from stream_app.live.durability import LiveDurability
from stream_app.live.lost_state import LostStateWatch
from stream_app.live.startup import group_committed_offsets
from stream_app.live.transport import CheckpointCommitConsumer
from stream_app.pipeline.committer import Committer
from stream_app.pipeline.files import FilePipeline
from stream_app.pipeline.journal import now_ms
from stream_app.pipeline.routing import RoutingStage
from stream_app.sinks.base import NotOwner

log = logging.getLogger(__name__)


class Rebalancing:
    _app: faust.App
    _settings: AppSettings
    pipeline: FilePipeline
    routing: RoutingStage | None
    committer: Committer
    durability: LiveDurability
    lost: LostStateWatch
    _lock: asyncio.Lock
    _committing: asyncio.Task | None
    _held: tuple[list[RawRecord], list[RawRecord], dict[tuple[str, int], int], Callable[[], bool]] | None
    _released: set[TP]
    _loop: asyncio.AbstractEventLoop | None
    _input_topics: frozenset[str]
    _repartition_topic: str | None
    delivery_owned: set[TP]
    deliverer: Deliverer | None

    async def _commit_round(self, revoking: bool = False) -> None:
        raise NotImplementedError  # LiveRuntime's

    def _confirm_owner(self, tp: TP, name: str) -> None:
        """The last step before a file is put in place (in the writer thread): this worker is
        still the group member that owns ``tp``, as the broker sees it.  A replica that lost the
        partition without noticing (a zombie) leaves no copy of the file in its own volume; the
        new owner writes it.  A commit of the persisted checkpoint is the probe (see
        CheckpointCommitConsumer.confirm_membership)."""
        assert self._loop is not None
        if tp in self._released:
            raise NotOwner(name, f"the revoke of {tp[0]}/{tp[1]} did not wait for this write")
        consumer = cast(CheckpointCommitConsumer, self._app.consumer)
        checkpoint = self.pipeline.persisted_checkpoint(tp)
        probe = asyncio.run_coroutine_threadsafe(
            consumer.confirm_membership(FaustTP(*tp), checkpoint.offset if checkpoint is not None else 0), self._loop)
        try:
            owner = probe.result(timeout=self._settings.kafka.sessionTimeoutMs / 1000)
        except Exception as exc:  # no answer in time: not confirmed, so not published (retried)
            probe.cancel()
            raise NotOwner(name, f"ownership of {tp[0]}/{tp[1]} not confirmed ({type(exc).__name__})") from None
        if not owner:
            log.warning("%s: partition %s/%d is no longer this worker's; its new owner writes the file",
                        name, tp[0], tp[1])
            raise NotOwner(name, f"partition {tp[0]}/{tp[1]} is no longer assigned to this worker")

    async def on_revoked(self, tps: Iterable[FaustTP]) -> None:
        # Fetched before the rebalance: Faust seeks back to the committed offsets afterwards (a
        # held batch would be dropped as stale anyway).
        self._held = None
        revoked = [(tp.topic, tp.partition) for tp in tps]
        # deliveries of these partitions stop here; their new owner recovers them from the outbox
        self.delivery_owned.difference_update(revoked)
        if self.deliverer is not None:
            self.deliverer.revoke(revoked)
        # Faust commits before the partitions go: is it still the cluster this state belongs
        # to?  (After a broker outage the group is left and joined again; a cluster re-created
        # empty meanwhile would get every checkpoint committed, past what its files hold.)
        await self.lost.recheck()
        # A file being written now must also get its journal event, facts, checkpoint and commit
        # before its partition moves (as Quix Streams' revoke does), else the new owner writes it
        # again — in its own volume, a second copy.  No further file of these partitions is
        # begun meanwhile (Committer.moving), and a write still under way at the deadline (half
        # the rebalance timeout) is not put in place (_confirm_owner): the new owner writes it.
        self.committer.moving.update(revoked)
        try:
            committing = self._committing

            async def flushes_done() -> None:
                # the background finalize + commit, and a tick's flush (which holds _lock); then
                # the committer's revoking round: what is written is made durable and committed,
                # and no file is begun (the new owner writes the rest)
                if committing is not None and not committing.done():
                    await asyncio.shield(committing)
                async with self._lock:
                    if self.lost.reason is None:
                        await self._commit_round(revoking=True)

            deadline_s = self._settings.kafka.rebalanceTimeoutMs / 2000
            try:
                await asyncio.wait_for(flushes_done(), deadline_s)
            except TimeoutError:
                self._released.update(revoked)
                log.warning("revoke: the files under way did not finish their durable steps within %.1f s; "
                            "the partitions' new owner writes them", deadline_s)
            except Exception as exc:  # its records are processed again by their new owner
                log.warning("revoke: the durable steps before the partitions move failed (%s)", type(exc).__name__)
            async with self.durability.write_lock:
                self.pipeline.revoke(revoked)
                if self.routing is not None:
                    self.routing.revoke(revoked)
                    self.committer.forget_revoked()
        finally:
            self.committer.moving.difference_update(revoked)
            self._released.difference_update(revoked)

    async def on_rebalance_complete(self) -> None:
        """Tables are recovered: compare the group's committed offsets with the checkpoints; in
        window scope route every assigned input partition, also one without records (its idle
        close must still reach the file stage), and announce what each has closed."""
        owned = [(tp.topic, tp.partition) for tp in self._app.consumer.assignment()
                 if tp.topic in self._input_topics or tp.topic == self._repartition_topic]
        file_stage = {self._repartition_topic} if self._repartition_topic is not None else self._input_topics
        # the tables are recovered: the outbox entries of these partitions are this worker's to deliver
        self.delivery_owned = {tp for tp in owned if tp[0] in file_stage}
        await self.lost.recheck()
        try:
            self.lost.check_committed(await asyncio.to_thread(group_committed_offsets, self._settings, owned))
        except Exception as exc:  # the broker went away meanwhile: checked at the next assignment
            log.warning("could not compare committed offsets with the checkpoints (%s)", type(exc).__name__)
        if self.routing is None:
            return
        async with self._lock:
            # read again: another rebalance may have revoked some of ``owned`` during the awaits
            # above, and a router kept for a partition routed elsewhere would close its windows
            assigned = [(tp.topic, tp.partition) for tp in self._app.consumer.assignment() if tp.topic in self._input_topics]
            self.routing.assign(assigned, now_ms())
