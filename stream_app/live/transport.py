"""A Faust Kafka transport whose commits follow the pipeline's checkpoints instead of acks.

Faust commits the highest run of acknowledged offsets.  Holding events unacked until their file
is finalized would work, but it keeps every message (with its value bytes) in memory for as long
as a window is open, which for a 6-hour window is unbounded.  Instead the worker acks each event
as soon as it has been processed, and this consumer commits, per input partition, exactly the
offset of the last *persisted* checkpoint: the lowest offset not yet in a finalized file.  Faust
still flushes the producer (journal, dead letters, table changelogs) before every commit.
"""

from __future__ import annotations

from typing import Callable, Optional

from faust.transport.drivers import TRANSPORTS
from faust.transport.drivers.aiokafka import Consumer as AIOKafkaConsumer
from faust.transport.drivers.aiokafka import Transport as AIOKafkaTransport
from faust.types import TP

SCHEME = "streamapp"

# (topic, partition) -> offset to commit, None for "nothing committable yet", or NOT_GATED for
# topics that are not pipeline inputs (Faust's own bookkeeping applies to them).
NOT_GATED = -1
CommitGate = Callable[[str, int], Optional[int]]


class CheckpointCommitConsumer(AIOKafkaConsumer):
    def _new_offset(self, tp: TP) -> Optional[int]:
        gate: CommitGate | None = getattr(self.app, "stream_app_commit_gate", None)
        offset = gate(tp.topic, tp.partition) if gate is not None else NOT_GATED
        if offset == NOT_GATED:
            return super()._new_offset(tp)
        # Acks of input partitions carry no meaning for commits: drop them so they do not pile up.
        self._acked[tp].clear()
        self._acked_index[tp].clear()
        return offset


class CheckpointCommitTransport(AIOKafkaTransport):
    Consumer = CheckpointCommitConsumer


TRANSPORTS.aliases[SCHEME] = f"{__name__}:CheckpointCommitTransport"
