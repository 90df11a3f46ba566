"""In-process implementations of the pipeline's ports, for replay and the unit tests."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Coroutine
from contextlib import AbstractAsyncContextManager
from typing import Any, TypeVar

from stream_app.core.windows import TP, Checkpoint, FileKey, WindowFacts

T = TypeVar("T")


class MemoryStateStore:
    """State that lives as long as the process (replay, unit tests).

    Facts are stored as copies, as a table stores them: what the windower changes later is not
    in the store until it is put again.
    """

    def __init__(self) -> None:
        self.facts: dict[FileKey, WindowFacts] = {}
        self.checkpoints: dict[TP, Checkpoint] = {}

    def get_facts(self, key: FileKey) -> WindowFacts | None:
        facts = self.facts.get(key)
        return WindowFacts.from_json(facts.to_json()) if facts is not None else None

    def put_facts(self, key: FileKey, facts: WindowFacts) -> None:
        self.facts[key] = WindowFacts.from_json(facts.to_json())

    def get_checkpoint(self, tp: TP) -> Checkpoint | None:
        return self.checkpoints.get(tp)

    def put_checkpoint(self, tp: TP, checkpoint: Checkpoint) -> None:
        self.checkpoints[tp] = checkpoint


class MemoryOutboxStore:
    """The delivery outbox's store in memory (unit tests, the delivery benchmark)."""

    def __init__(self) -> None:
        self.data: dict[str, str] = {}

    def put_delivery(self, owner: TP, key: str, value: str | None) -> None:
        if value is None:
            self.data.pop(key, None)
        else:
            self.data[key] = value

    def stored_deliveries(self) -> list[str]:
        return list(self.data.values())


class ImmediateDurability:
    """Replay's durability: its state lives in memory for the run, so every step is durable at
    once and nothing is committed (a replay never touches the group's offsets)."""

    def writing(self) -> AbstractAsyncContextManager[object]:
        return contextlib.nullcontext()

    async def run_write(self, write: Callable[[], T]) -> T:
        return write()

    async def events_delivered(self) -> None:
        return None

    async def state_delivered(self) -> None:
        return None

    async def routed_delivered(self) -> None:
        return None

    async def commit_offsets(self) -> None:
        return None


def run_now(step: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine whose awaits all complete at once (immediate ports) to its end, here.

    Replay drives the same committer coroutine as the live worker, but has no I/O to wait for:
    no event loop is needed, and a suspension would mean some port waited for real I/O."""
    try:
        step.send(None)
    except StopIteration as done:
        return done.value
    step.close()
    raise RuntimeError("a replay step waited for I/O; only immediate ports can run it here")
