"""The ports of the pipeline: what the stages and the committer need from the world around them.

The live worker implements them on Kafka (a Faust table, producers, the consumer's commit);
replay and the unit tests implement them in memory (``pipeline/memory.py``), so both run the
same stages and the same committer and produce the same bytes.
"""

from __future__ import annotations

from typing import Protocol

from stream_app.core.records import RawRecord
from stream_app.core.windows import TP, Checkpoint, FileKey, WindowFacts


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
