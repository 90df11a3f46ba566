"""Health: lag per partition, the stall watchdog, and the readiness probe's answer."""

from __future__ import annotations

import time
from typing import cast

import faust
from faust.types import TP as FaustTP

from stream_app.config import AppSettings
from stream_app.core.windows import TP
from stream_app.live.events import EventPublisher
from stream_app.live.lost_state import LostStateWatch
from stream_app.live.repartition import KafkaRepartitionSender
from stream_app.live.tables import FaustStateStore
from stream_app.live.transport import CheckpointCommitConsumer
from stream_app.pipeline.files import FilePipeline
from stream_app.pipeline.routing import RoutingStage
from stream_app.sinks.base import SinkError


class Health:
    def __init__(self, app: faust.App, settings: AppSettings, pipeline: FilePipeline, routing: RoutingStage | None,
                 publisher: EventPublisher, repartition: KafkaRepartitionSender | None, state: FaustStateStore,
                 lost: LostStateWatch) -> None:
        self._app = app
        self._settings = settings
        self.pipeline = pipeline
        self.routing = routing
        self.publisher = publisher
        self.repartition = repartition
        self.state = state
        self.lost = lost
        self._repartition_topic = settings.repartition_topic if routing is not None else None
        self.progress_at = time.monotonic()  # last batch processed, file written or commit (the watchdog)

    def progressed(self) -> None:
        self.progress_at = time.monotonic()

    def stage_of(self, tp: TP) -> str:
        if self.routing is None:
            return "partition"
        return "files" if tp[0] == self._repartition_topic else "routing"

    def lag(self, tp: TP) -> int | None:
        """Records of ``tp`` not yet processed; None when unknown, or when ``tp`` is not assigned
        to this worker at this moment (a tick, the watchdog or readiness may run mid-rebalance)."""
        highwater = cast(CheckpointCommitConsumer, self._app.consumer).owned_highwater(FaustTP(tp[0], tp[1]))
        if highwater is None or highwater < 0:
            return None
        if self.routing is not None and tp[0] != self._repartition_topic:
            next_offset = self.routing.position(tp)
        else:
            next_offset = self.pipeline.stage(tp).next_offset
        if next_offset is None:
            return None
        return max(0, highwater - next_offset)

    def caught_up(self, tp: TP) -> bool:
        """No lag on the partition: what was fetched has been processed up to the high watermark."""
        return self.lag(tp) == 0

    def stalled_for_s(self) -> float | None:
        """Seconds without progress while work is pending, once beyond worker.stallTimeoutMs."""
        idle = time.monotonic() - self.progress_at
        if idle * 1000 < self._settings.worker.stallTimeoutMs:
            return None
        if any((c.key, c.part) not in self.pipeline.halted for c in self.pipeline.pending_cuts()):
            return idle
        owned = self.pipeline.partitions() + (self.routing.partitions() if self.routing is not None else [])
        return idle if any((self.lag(tp) or 0) > 0 for tp in owned) else None

    def not_ready_reason(self) -> str | None:
        if self.lost.reason is not None:
            return self.lost.reason
        if self.publisher.undeliverable is not None:
            return f"cannot deliver events: {self.publisher.undeliverable}"
        if self.repartition is not None and self.repartition.undeliverable is not None:
            return f"cannot deliver repartition records: {self.repartition.undeliverable}"
        if self.state.in_flight.undeliverable is not None:
            return f"cannot deliver table changes: {self.state.in_flight.undeliverable}"
        if self.pipeline.halted_reason is not None:
            return f"halted by a terminal error (fix, then restart): {self.pipeline.halted_reason}"
        if self._app.in_recovery:
            return "tables recovering (reading their changelogs after an assignment)"
        if not self._app.consumer.assignment():
            return "no partitions assigned (joining the group, or more replicas than partitions)"
        stalled = self.stalled_for_s()
        if stalled is not None:
            return f"no progress for {stalled:.0f} s with work pending (worker.stallTimeoutMs)"
        try:
            self.pipeline.sink.check_writable()
        except SinkError as exc:
            return f"sink not writable: {exc}"
        return None
