"""The ports of the pipeline: what the stages and the committer need from the world around them.

The live worker implements them on Kafka (a Faust table, producers, the consumer's commit);
replay and the unit tests implement them in memory (``pipeline/memory.py``), so both run the
same stages and the same committer and produce the same bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol, TypeVar, runtime_checkable

from stream_app.core.records import RawRecord, SourceRecord
from stream_app.core.windows import TP, Checkpoint, FileKey, WindowFacts

T = TypeVar("T")


class StateStore(Protocol):
    """Durable window facts and partition checkpoints (a Faust table in the live worker)."""

    def get_facts(self, key: FileKey) -> WindowFacts | None: ...

    def put_facts(self, key: FileKey, facts: WindowFacts) -> None: ...

    def get_checkpoint(self, tp: TP) -> Checkpoint | None: ...

    def put_checkpoint(self, tp: TP, checkpoint: Checkpoint) -> None: ...


class Publisher(Protocol):
    def journal(self, event: dict, partition_key: str) -> None: ...

    def dead_letter(self, raw: RawRecord, reason: str, detail: str) -> None: ...


class RepartitionSender(Protocol):
    def send(self, partition: int, key: bytes, value: bytes) -> None:
        """Queue one repartition record; records to one partition keep their order."""
        ...


@dataclass(slots=True)
class HandedOverRun:
    """A run of routed records handed from the routing stage to the file stage in one process
    (replay), decoded: what the file stage would read from the repartition record at ``offset``
    of ``partition`` of ``topic``."""

    topic: str
    partition: int
    offset: int
    key: FileKey
    source: TP
    records: list[SourceRecord]


@runtime_checkable
class RecordHandOver(Protocol):
    """A sender whose file stage runs in this process and takes routed runs as records, sparing
    both stages the carried form's encoding and decoding (``hands_over``: it does so now)."""

    hands_over: bool

    def send_records(self, partition: int, key: FileKey, source: TP, records: list[SourceRecord]) -> None: ...


def handing_over(sender: object) -> RecordHandOver | None:
    """``sender`` when it hands routed records over now (replay's loopback), else None."""
    return sender if isinstance(sender, RecordHandOver) and sender.hands_over else None


class RoutedRecordsLost(RuntimeError):
    """Some repartition records were not delivered and never will be (a fenced producer): the
    routing stage routes again from its persisted checkpoints (``RoutingStage.rewind``)."""


class Durability(Protocol):
    """How the committer learns that what the stages sent is durable, and how a file is written.

    Live (``live/durability.py``): each ``*_delivered`` awaits the broker's acknowledgements, a
    file is written in a thread while the revoke waits for it, and ``commit_offsets`` commits the
    confirmed checkpoints.  Replay (``pipeline/memory.py``): all of it is done at once.

    Failure rule: a method that cannot confirm durability raises, and the committer stops that
    round there, so nothing after the failed step is persisted or committed; the records are
    processed again (after a retry, a restart or a rewind).  ``routed_delivered`` raises
    ``RoutedRecordsLost`` when repartition records are lost for good.
    """

    def writing(self) -> AbstractAsyncContextManager[object]:
        """Held while one file is written (a revoke waits for it)."""
        ...

    async def run_write(self, write: Callable[[], T]) -> T:
        """Run a blocking file write (assembly and sink I/O)."""
        ...

    async def events_delivered(self) -> None:
        """Journal events and dead letters published so far are acknowledged."""
        ...

    async def state_delivered(self) -> None:
        """Facts and checkpoints put in the state store so far are durable."""
        ...

    async def routed_delivered(self) -> None:
        """Repartition records sent so far are acknowledged."""
        ...

    async def commit_offsets(self) -> None:
        """Commit the consumer offsets up to the confirmed checkpoints."""
        ...
