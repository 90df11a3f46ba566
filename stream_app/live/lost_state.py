"""Lost state: the cluster no longer holds what this worker's files and checkpoints rest on.

Two signs, either enough: the cluster answers with another cluster id (re-created empty at the
same address: topics, committed offsets and routed records gone), or the group's committed
offsets are ahead of the checkpoints the tables hold (a changelog gone, offsets restored from
elsewhere, another group committing for this one).  Either is reported once (ERROR, /readyz)
and nothing is processed or committed after it; docs/operations.md says what to do.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping

from stream_app.core.windows import TP
from stream_app.live.startup import BrokerProbe
from stream_app.pipeline.ports import StateStore

log = logging.getLogger(__name__)


class LostStateWatch:
    # A commit waits until the cluster was recognised (same cluster id) this recently, with no
    # failed check since: a cluster re-created empty at the same address is never committed to.
    CONFIRMED_S = 30.0
    CHECK_S = 1.0

    def __init__(self, cluster: BrokerProbe | None, state: StateStore) -> None:
        self.cluster = cluster  # the cluster's identity (None: not checked, the unit tests)
        self._state = state
        self._check: asyncio.Future | None = None
        self._checked_at = 0.0
        self.reason: str | None = None  # set once, never cleared: a restart reads everything again

    def allows_commit(self) -> bool:
        """Not lost, and recognised as the cluster this state belongs to."""
        return self.reason is None and (self.cluster is None or self.cluster.confirmed(self.CONFIRMED_S))

    def poll(self) -> None:
        """Ask for the cluster's identity about once a second, in a thread (a metadata request
        must not hold the tick); a cluster that answers with another id lost this worker's state."""
        if self.cluster is None:
            return
        if self._check is None or self._check.done():
            if time.monotonic() - self._checked_at >= self.CHECK_S:
                self._checked_at = time.monotonic()
                self._check = asyncio.ensure_future(asyncio.to_thread(self.cluster.problem, 2.0))
        self.note_cluster_change()

    async def recheck(self) -> None:
        """Ask now (before a revoke commits, after an assignment)."""
        if self.cluster is not None:
            await asyncio.to_thread(self.cluster.recheck, 2.0)
            self.poll()

    def note_cluster_change(self) -> None:
        if self.cluster is not None and self.cluster.changed_to is not None and self.reason is None:
            self.reason = (f"the cluster lost state: it answers as cluster {self.cluster.changed_to}, not "
                           f"{self.cluster.cluster_id} (re-created empty: topics, committed offsets and "
                           "routed records are gone); nothing is committed there; see docs/operations.md")
            log.error("%s", self.reason)

    def check_committed(self, committed: Mapping[TP, int]) -> str | None:
        """The worker only ever commits up to a persisted checkpoint, so a committed offset above
        the checkpoint its table holds means the cluster lost state or another group committed
        for this one: reported rather than committed over."""
        ahead = []
        for tp, offset in sorted(committed.items()):
            checkpoint = self._state.get_checkpoint(tp)
            if offset > (checkpoint.offset if checkpoint is not None else 0):
                ahead.append(f"{tp[0]}/{tp[1]} committed {offset}, checkpoint "
                             f"{checkpoint.offset if checkpoint is not None else 'none'}")
        if ahead and self.reason is None:
            self.reason = ("committed offsets ahead of the persisted checkpoints (" + "; ".join(ahead[:3])
                           + (f"; {len(ahead) - 3} more" if len(ahead) > 3 else "")
                           + "): the cluster lost state, see docs/operations.md")
            log.error("%s", self.reason)
        return self.reason
