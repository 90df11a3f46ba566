"""The routing stage of business files (``fileScope: window``), shared by the live worker and replay.

input batch -> decode -> validate -> route/late per input partition -> repartition records and
close frontiers -> (driver) acknowledged -> checkpoint -> commit input offsets.

It never imports Kafka: what it sends goes to a ``RepartitionSender`` (a Kafka producer in the
worker; the file stage itself in replay), dead letters to the ``Publisher``.  It holds no
records: a batch's routed records are sent before the batch is done, so the input partition
can be committed as soon as the driver has their acknowledgements and the checkpoint.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any, cast

from stream_app.codecs import DecodeError, Decoder
from stream_app.codecs.carried import as_read
from stream_app.codecs.repartition import (
    BATCH_OVERHEAD,
    ENVELOPE_ROOM,
    encode_frontier,
    encode_runs,
    repartition_message_bytes,
    routed_record_bytes,
)
from stream_app.core.records import RawRecord, SourceRecord, is_redriven
from stream_app.core.routing import Late, PartitionRouter, repartition_partition
from stream_app.core.structured.assembler import StructuredAssembler
from stream_app.core.windows import TP, Checkpoint, FileKey, WindowAssigner, WindowPolicy
from stream_app.ops.faults import failpoint
from stream_app.pipeline.checkpoints import CheckpointLedger
from stream_app.pipeline.intake import take_batch
from stream_app.pipeline.ports import Publisher, RepartitionSender, StateStore, handing_over

log = logging.getLogger(__name__)


class RoutingStage:
    def __init__(self, policy: WindowPolicy, group_by: Sequence[str | tuple[str, str]], decoder: Decoder,
                 validator: StructuredAssembler | None, state: StateStore, publisher: Publisher,
                 sender: RepartitionSender, repartition_partitions: int, max_record_bytes: int) -> None:
        self._policy = policy
        self._assigner = WindowAssigner(policy, group_by, per_partition=False)
        self._decoder = decoder
        # Structured mode with onInvalidRecord: deadLetter: invalid records are dead-lettered here;
        # with fail they are routed and halt their window in the file stage.
        self._validator = validator if validator is not None and validator.on_invalid_record == "deadLetter" else None
        self._state = state
        self._publisher = publisher
        self._sender = sender
        # Replay: the file stage in this process takes the routed records themselves.
        self._hand_over = handing_over(sender)
        self._partitions = repartition_partitions
        self._routers: dict[TP, PartitionRouter] = {}
        # a routing checkpoint also moves without a new offset (watermark, close frontier)
        self._checkpoints = CheckpointLedger(state, lambda previous, new: new != previous)
        # After a rewind: per input partition, the last offset routed before it.  Records above it
        # that arrive before the re-read ones were fetched before the seek, and are dropped.
        self._stale_above: dict[TP, int] = {}
        self.late_records = 0
        # The largest repartition value and key the topic takes (codecs/repartition.py), and the
        # carried size below which a record fits whatever its file key.
        self._max_routed_bytes = repartition_message_bytes(max_record_bytes) - BATCH_OVERHEAD
        self._surely_fits = self._max_routed_bytes - ENVELOPE_ROOM
        # After a rewind: per input partition, the last offset whose dead letter was published
        # before it; the re-read does not publish those again.
        self._dead_lettered_through: dict[TP, int] = {}

    # -- partitions -------------------------------------------------------------------------
    def router(self, tp: TP, now_wall_ms: int | None = None) -> PartitionRouter:
        router = self._routers.get(tp)
        if router is None:
            checkpoint = self._state.get_checkpoint(tp)
            router = self._routers[tp] = PartitionRouter(tp[0], tp[1], self._policy, self._assigner, checkpoint)
            self._checkpoints.restored(tp, checkpoint)
            if now_wall_ms is not None:
                router.idle_since(now_wall_ms)
            # A new owner (or a restart) announces what its checkpoint says is closed: the marker
            # of an idle close may have been lost between its checkpoint and its send.
            self._announce(router)
        return router

    def assign(self, tps: Iterable[TP], now_wall_ms: int) -> None:
        """Partitions this worker routes now, records or not (an empty one must close too)."""
        for tp in tps:
            self.router(tp, now_wall_ms)

    def revoke(self, tps: Iterable[TP]) -> None:
        for tp in tps:
            self._routers.pop(tp, None)
            self._checkpoints.forget(tp)
            self._stale_above.pop(tp, None)
            self._dead_lettered_through.pop(tp, None)

    def rewind(self) -> dict[TP, int]:
        """Forget everything routed since the persisted checkpoints (the repartition producer
        lost records: what it delivered is a prefix of what it was given, per partition) and
        give, per input partition, the offset to read again from.  The routers are rebuilt from
        the checkpoints, so the same records make the same decisions; the file stage drops the
        copies of the records it already has, by source coordinates."""
        seek: dict[TP, int] = {}
        for tp, router in self._routers.items():
            checkpoint = self._state.get_checkpoint(tp)
            start = checkpoint.offset if checkpoint is not None else 0
            if router.next_offset is not None and router.next_offset > start:
                self._stale_above[tp] = router.next_offset - 1
                self._dead_lettered_through[tp] = max(router.next_offset - 1, self._dead_lettered_through.get(tp, -1))
            seek[tp] = start
        self._routers.clear()
        self._checkpoints.clear()
        return seek

    def partitions(self) -> list[TP]:
        return list(self._routers)

    def position(self, tp: TP) -> int | None:
        """The next offset of ``tp`` to route (known for an empty partition too); None when not routed here."""
        router = self._routers.get(tp)
        return router.position if router is not None else None

    # -- input ------------------------------------------------------------------------------
    def prefetch(self, raws: Sequence[RawRecord]) -> None:
        self._decoder.prefetch(raws)

    def process(self, raws: Sequence[RawRecord], now_wall_ms: int) -> None:
        """Route a batch; its repartition records and frontiers are queued on the sender."""
        # per (file key, source): the entries to encode, or the records to hand over
        runs: dict[tuple[FileKey, TP], list[Any]] = {}
        hand_over = self._hand_over
        touched: dict[TP, tuple[PartitionRouter, int]] = {}

        def router_of(tp: TP) -> PartitionRouter:
            router = self.router(tp, now_wall_ms)
            if tp not in touched:
                touched[tp] = (router, router.frontier())
            return router

        def route(raw: RawRecord, record: SourceRecord, router: PartitionRouter) -> None:
            if self._validator is not None:
                self._validator.project(record.value)
            carried = record.carried if record.carried is not None else as_read(cast(bytes, raw.value))
            if len(carried) > self._surely_fits:
                self._check_routable(record, carried)
            outcome = router.route(record, now_wall_ms, is_redriven(raw))
            if outcome is None:
                return
            if isinstance(outcome, Late):
                self.late_records += 1
                self._publish_dead_letter(raw, "LATE_RECORD",
                                          f"window {outcome.key.id} was already closed for {raw.topic}/{raw.partition}")
                return
            if hand_over is not None:
                record.carried = None  # held in a window until its file is written: not twice
                runs.setdefault((outcome, (raw.topic, raw.partition)), []).append(record)
                return
            runs.setdefault((outcome, (raw.topic, raw.partition)), []).append(
                (record.offset, record.event_time_ms, carried))

        take_batch(raws, self._decoder.decode_many(raws), self._policy, router_of, route, self._publish_dead_letter,
                   self._is_stale if self._stale_above else None)
        for (key, source), records in runs.items():
            partition = repartition_partition(key, self._partitions)
            if hand_over is not None:
                hand_over.send_records(partition, key, source, records)
                continue
            for payload in encode_runs(key, source, records):
                self._sender.send(partition, key.id.encode(), payload)
        # Frontiers go after the records that moved them, to every repartition partition.
        for routed, before in touched.values():
            if routed.frontier() > before:
                self._announce(routed)
        failpoint("routing.after-send")

    def _is_stale(self, raw: RawRecord) -> bool:
        tp = (raw.topic, raw.partition)
        last = self._stale_above.get(tp)
        if last is None:
            return False
        if raw.offset > last:
            return True  # fetched before the rewind's seek
        del self._stale_above[tp]  # the re-read has begun
        return False

    def _check_routable(self, record: SourceRecord, carried: bytes) -> None:
        """A record the repartition topic cannot take is a dead letter, decided before routing
        (and the same in replay): sent, the producer would refuse it and the partition would
        stall behind it."""
        size = routed_record_bytes(self._assigner.key_for(record), (record.topic, record.partition), len(carried))
        if size > self._max_routed_bytes:
            raise DecodeError("TOO_LARGE_TO_ROUTE", f"routed, the record takes {size} bytes; the repartition topic "
                                                    f"takes {self._max_routed_bytes} (from input.maxRecordBytes)")

    def _publish_dead_letter(self, raw: RawRecord, reason: str, detail: str) -> None:
        through = self._dead_lettered_through.get((raw.topic, raw.partition))
        if through is not None and raw.offset <= through:
            return  # published before a rewind; the publisher delivers it on its own
        self._publisher.dead_letter(raw, reason, detail)

    def _announce(self, router: PartitionRouter) -> None:
        frontier = router.frontier()
        if frontier < 0:
            return
        payload = encode_frontier((router.topic, router.partition), router.next_offset or 0, frontier)
        for partition in range(self._partitions):
            self._sender.send(partition, b"", payload)

    # -- wall clock -------------------------------------------------------------------------
    def close_idle(self, now_wall_ms: int, caught_up: Callable[[TP], bool]) -> list[TP]:
        """Idle closes: the partitions whose frontier moved.  The driver persists their checkpoints
        (``advance_checkpoints`` + confirm) and only then calls ``announce``."""
        return [tp for tp, router in self._routers.items() if caught_up(tp) and router.close_idle(now_wall_ms)]

    def announce(self, tps: Iterable[TP]) -> None:
        for tp in tps:
            router = self._routers.get(tp)
            if router is not None:
                self._announce(router)

    # -- commit -----------------------------------------------------------------------------
    def advance_checkpoints(self) -> dict[TP, Checkpoint]:
        """Write the checkpoints that moved; the driver calls this once the batch's repartition
        records and dead letters are acknowledged, and ``confirm_checkpoints`` once these are."""
        moved: dict[TP, Checkpoint] = {}
        for tp, router in self._routers.items():
            checkpoint = router.checkpoint()
            if checkpoint is not None and self._checkpoints.write(tp, checkpoint):
                moved[tp] = checkpoint
        return moved

    def confirm_checkpoints(self) -> None:
        self._checkpoints.confirm(self._routers)

    def persisted_checkpoint(self, tp: TP) -> Checkpoint | None:
        return self._checkpoints.confirmed(tp)
