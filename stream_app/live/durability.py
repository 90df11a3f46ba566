"""The committer's ``Durability`` port on Kafka: broker acknowledgements and the consumer commit."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Protocol, TypeVar

from stream_app.ops.faults import failpoint

T = TypeVar("T")


class Delivers(Protocol):
    async def delivered(self) -> None: ...


class LiveDurability:
    """Each ``*_delivered`` waits for the producer (or changelog) acknowledgements of what was
    sent so far, retrying undeliverable sends itself; a file is written in a thread while the
    worker's ``writing`` lock is held, so a revoke waits for that write before the partition goes."""

    def __init__(self, events: Delivers, state: Delivers, routed: Delivers | None,
                 commit: Callable[[], Awaitable[object]]) -> None:
        self._events = events
        self._state = state
        self._routed = routed
        self._commit = commit
        self.write_lock = asyncio.Lock()

    def writing(self) -> AbstractAsyncContextManager[object]:
        return self.write_lock

    async def run_write(self, write: Callable[[], T]) -> T:
        return await asyncio.to_thread(write)

    async def events_delivered(self) -> None:
        await self._events.delivered()

    async def state_delivered(self) -> None:
        await self._state.delivered()

    async def routed_delivered(self) -> None:
        if self._routed is not None:
            await self._routed.delivered()

    async def commit_offsets(self) -> None:
        """Commit the new checkpoints now (Faust would within commitIntervalMs anyway)."""
        await self._commit()
        failpoint("live.after-commit")  # committed; later journal events of this batch not yet sent
