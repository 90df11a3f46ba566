"""Each owned partition's checkpoint, as written and as confirmed durable, for either stage.

A checkpoint is *sent* when it is put in the state store and *confirmed* once the driver knows
the store has it durably (``Committer``); the consumer commits only confirmed ones.  One record
per partition, dropped with the partition, instead of two parallel dicts in each stage.
"""

from __future__ import annotations

from collections.abc import Callable, Container
from dataclasses import dataclass

from stream_app.core.windows import TP, Checkpoint
from stream_app.pipeline.ports import StateStore


@dataclass(slots=True)
class PartitionCheckpoint:
    sent: Checkpoint | None = None
    confirmed: Checkpoint | None = None


class CheckpointLedger:
    def __init__(self, state: StateStore, moves: Callable[[Checkpoint, Checkpoint], bool]) -> None:
        """``moves(previous, new)``: whether ``new`` is worth writing over ``previous``."""
        self._state = state
        self._moves = moves
        self._partitions: dict[TP, PartitionCheckpoint] = {}

    def restored(self, tp: TP, checkpoint: Checkpoint | None) -> None:
        """A partition assigned: the checkpoint its state holds is already durable."""
        if checkpoint is not None:
            self._partitions[tp] = PartitionCheckpoint(checkpoint, checkpoint)

    def forget(self, tp: TP) -> None:
        self._partitions.pop(tp, None)

    def clear(self) -> None:
        self._partitions.clear()

    def write(self, tp: TP, checkpoint: Checkpoint) -> bool:
        """Put ``checkpoint`` in the state store if it moved; True when it did."""
        entry = self._partitions.setdefault(tp, PartitionCheckpoint())
        if entry.sent is not None and not self._moves(entry.sent, checkpoint):
            return False
        self._state.put_checkpoint(tp, checkpoint)
        entry.sent = checkpoint
        return True

    def confirm(self, owned: Container[TP]) -> None:
        """Everything written so far is durable (partitions revoked meanwhile stay forgotten)."""
        for tp, entry in self._partitions.items():
            if tp in owned:
                entry.confirmed = entry.sent

    def confirmed(self, tp: TP) -> Checkpoint | None:
        entry = self._partitions.get(tp)
        return entry.confirmed if entry is not None else None
