"""The one owner of the order of durable steps, for the live worker and for replay.

A file is only as safe as the steps after it.  ``Committer.commit`` runs them in one order,
whichever driver calls it: the live runtime (after each batch, on its tick, and on a revoke
with ``revoking=True``) and replay (after each batch, with ports that are durable at once).

1. **Write** each due file: assemble → compress → sink (atomic rename) → manifest line; its
   `created` journal event is queued and its window's facts wait, unpersisted.
2. **Events delivered**: the journal events (and dead letters) are acknowledged.
3. **Facts persisted** and delivered: the state store says which parts are done; with them
   the delivery outbox's changes (files queued for their destinations, deliveries done).
4. **File-stage checkpoints** written, delivered, then confirmed: the offsets below them are
   in files whose facts are durable.
5. **Routing stage** (business files): repartition records and dead letters acknowledged, its
   checkpoints written, delivered, confirmed; idle closes announced only then.
6. **Commit** the consumer offsets up to the confirmed checkpoints.

What a crash between two steps leaves (docs/architecture.md has the table): after 1, a file
without facts, written again with the same bytes after a restart (the `created` event is sent
again with the same id); after 2, the same; after 3, facts without a checkpoint: the restart
reads the part's records again and skips what the facts say is done; after 4 or 5, checkpoints
ahead of the commit, which the commit gate catches up; nothing is ever committed past a file
that is not durable, because step 6 commits only confirmed checkpoints.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import partial

from stream_app.core.windows import TP
from stream_app.ops.faults import failpoint
from stream_app.pipeline.files import FilePipeline, FlushSummary
from stream_app.pipeline.outbox import Outbox
from stream_app.pipeline.ports import Durability, RoutedRecordsLost
from stream_app.pipeline.routing import RoutingStage

log = logging.getLogger(__name__)


@dataclass
class CommitRound:
    """What one ``commit`` did."""

    summary: FlushSummary = field(default_factory=FlushSummary)
    committed: bool = False  # consumer offsets were committed (a checkpoint moved)
    routed_lost: RoutedRecordsLost | None = None  # step 5 failed: route again from the checkpoints


class Committer:
    def __init__(self, files: FilePipeline, routing: RoutingStage | None, durability: Durability,
                 outbox: Outbox | None = None) -> None:
        self.files = files
        self.routing = routing
        self.durability = durability
        self.outbox = outbox  # None: no delivery configured (and in replay)
        # Partitions being revoked: no new file of theirs is begun (their new owner writes it).
        self.moving: set[TP] = set()
        # Routed partitions whose idle close waits for its checkpoint before it is announced.
        self._idle_closed: list[TP] = []

    # -- what the next round has to do --------------------------------------------------------
    def idle_closed(self, tps: Iterable[TP]) -> None:
        self._idle_closed.extend(tps)

    @property
    def announcements_pending(self) -> bool:
        return bool(self._idle_closed)

    def forget_revoked(self) -> None:
        """Drop the announcements of partitions this worker no longer routes."""
        routed = set(self.routing.partitions()) if self.routing is not None else set()
        self._idle_closed = [tp for tp in self._idle_closed if tp in routed]

    def forget_announcements(self) -> None:
        """A rewind rebuilt the routers: they announce what their checkpoints closed."""
        self._idle_closed = []

    # -- the durable order --------------------------------------------------------------------
    async def commit(self, now_wall_ms: int, *, revoking: bool = False, route: bool = True) -> CommitRound:
        """Write the due files (none while ``revoking``), make every step durable in order, and
        commit.  ``route``: run the routing stage's steps this round (the live worker paces them
        at ``commitIntervalMs``: each costs three round trips)."""
        done = CommitRound()
        # 1. Write.
        cuts = [] if revoking else self.files.due_cuts(now_wall_ms)
        for cut in cuts:
            if self.files.has_unpersisted_facts and await self._make_files_durable():
                # The file before this one is durable and committed before the next write begins:
                # a replica that loses its partition during a (long) write leaves no file in place
                # that its new owner would write again.
                await self.durability.commit_offsets()
            if self.files.owner_of(cut.key) in self.moving:
                continue  # its partition moves: the new owner writes it
            async with self.durability.writing():
                if not self.files.ready_to_write(cut):
                    continue  # its partition was revoked meanwhile, or an earlier part just failed
                outcome = await self.durability.run_write(partial(self.files.write_cut, cut))
                if self.files.record_outcome(cut, outcome, now_wall_ms, done.summary) and self.outbox is not None:
                    assert outcome.result is not None
                    self.outbox.queue(cut, outcome.result, self.files.owner_of(cut.key), now_wall_ms)
        if cuts:
            self.files.journal_summary(done.summary)
        # 2.–4. Events delivered, facts persisted, file-stage checkpoints confirmed.
        moved = await self._make_files_durable()
        # 5. The routing stage's checkpoints (and the idle closes they allow to announce).
        if self.routing is not None and route:
            try:
                moved = await self._make_routing_durable() or moved
            except RoutedRecordsLost as exc:
                done.routed_lost = exc  # nothing of the routing stage moved; the driver rewinds
        # 6. Commit up to the confirmed checkpoints.
        if moved:
            await self.durability.commit_offsets()
            done.committed = True
        return done

    async def _make_files_durable(self) -> bool:
        """Steps 2–4; True when a checkpoint moved (a commit is due).

        Changelog and journal records on different partitions are delivered in no fixed order,
        so each step awaits the delivery of the one before it: the journal events (`created`,
        `closed`) before the facts that say a part is done (else a crash between them loses the
        events for good); the facts before any checkpoint that skips the part's offsets (else a
        restart re-creates the part from the offsets above the checkpoint only: a different file
        under the same name); and the checkpoint before the commit that follows it."""
        outbox_changed = self.outbox is not None and self.outbox.has_changes
        if self.files.has_unpersisted_facts or outbox_changed:
            await self.durability.events_delivered()
            failpoint("live.before-facts")  # `created` delivered, the facts not yet written
            self.files.persist_facts()
            if self.outbox is not None:
                # with the facts: a file whose part is done is queued for delivery, and a delivery
                # leaves the outbox only after its `delivered` event is acknowledged
                self.outbox.persist()
            await self.durability.state_delivered()
        if not self.files.advance_checkpoints():
            return False
        await self.durability.state_delivered()
        self.files.confirm_checkpoints()
        return True

    async def _make_routing_durable(self) -> bool:
        """Step 5: repartition records and dead letters acknowledged, then the checkpoint (offset,
        watermark, close frontier), then (step 6) the commit of input offsets.  An idle close is
        announced only after its checkpoint is durable, so a restart can never route a record
        into a window that some repartition partition already saw closed."""
        assert self.routing is not None
        await self.durability.routed_delivered()
        await self.durability.events_delivered()
        failpoint("routing.before-checkpoint")
        moved = bool(self.routing.advance_checkpoints())
        if moved:
            await self.durability.state_delivered()
            self.routing.confirm_checkpoints()
        if self._idle_closed:
            announce, self._idle_closed = self._idle_closed, []
            self.routing.announce(announce)
            await self.durability.routed_delivered()
        return moved
