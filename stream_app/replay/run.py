"""Replay's drivers: the same core and stages as the live worker, over a bounded input, without
Faust.  ``run_records`` processes a complete sequence of raw records and closes every window at
the end of the input (a replay of an offset or time range); ``run_window_records`` does the same
for business files, both stages in one process through ``LoopbackSender``.
"""

from __future__ import annotations

from collections.abc import Iterable

from stream_app.core.records import RawRecord
from stream_app.pipeline.files import FilePipeline, FlushSummary
from stream_app.pipeline.routing import RoutingStage

END_OF_INPUT_MS = 2**62  # a wall-clock "now" after every window end: closes everything


def flush_due(pipeline: FilePipeline, now_wall_ms: int) -> FlushSummary:
    summary = FlushSummary()
    cuts = pipeline.due_cuts(now_wall_ms)
    for cut in cuts:
        if pipeline.ready_to_write(cut):  # not when an earlier part failed in this loop
            pipeline.apply_write(cut, pipeline.write_cut(cut), now_wall_ms, summary)
    if cuts:
        pipeline.finish_flush(summary)
    pipeline.advance_checkpoints()
    pipeline.confirm_checkpoints()  # the in-memory state is durable for as long as replay runs
    return summary


def run_records(pipeline: FilePipeline, raws: Iterable[RawRecord], batch_size: int = 10_000) -> FlushSummary:
    total = FlushSummary()

    add = total.add
    batch: list[RawRecord] = []
    for raw in raws:
        batch.append(raw)
        if len(batch) >= batch_size:
            pipeline.process(batch, 0)
            add(flush_due(pipeline, 0))
            batch = []
    pipeline.process(batch, 0)
    add(flush_due(pipeline, 0))
    pipeline.tick(END_OF_INPUT_MS)
    add(flush_due(pipeline, END_OF_INPUT_MS))
    return total


class LoopbackSender:
    """Both stages in one process: the file stage reads what the routing stage sends, in order,
    without a repartition topic (the bytes do not depend on where the records travel)."""

    def __init__(self, topic: str) -> None:
        self._topic = topic
        self._next: dict[int, int] = {}
        self._queued: list[RawRecord] = []

    def send(self, partition: int, key: bytes, value: bytes) -> None:
        offset = self._next.get(partition, 0)
        self._next[partition] = offset + 1
        self._queued.append(RawRecord(self._topic, partition, offset, None, key, value))

    def drain(self) -> list[RawRecord]:
        queued, self._queued = self._queued, []
        return queued


def run_window_records(routing: RoutingStage, files: FilePipeline, sender: LoopbackSender,
                       sources: Iterable[tuple[str, int]], raws: Iterable[RawRecord],
                       batch_size: int = 10_000) -> FlushSummary:
    """Business files over a bounded input: route, collect, and close every window at the end."""
    total = FlushSummary()

    def step(batch: list[RawRecord], now_wall_ms: int) -> None:
        routing.process(batch, now_wall_ms)
        files.process_routed(sender.drain(), now_wall_ms)
        total.add(flush_due(files, now_wall_ms))
        routing.advance_checkpoints()
        routing.confirm_checkpoints()

    routing.assign(sources, 0)
    batch: list[RawRecord] = []
    for raw in raws:
        batch.append(raw)
        if len(batch) >= batch_size:
            step(batch, 0)
            batch = []
    step(batch, 0)
    closed = routing.close_idle(END_OF_INPUT_MS, lambda tp: True)
    routing.advance_checkpoints()
    routing.confirm_checkpoints()
    routing.announce(closed)
    step([], END_OF_INPUT_MS)
    return total


class CountingPublisher:
    """Replay publishes nothing: journal events are dropped, dead letters are counted by reason."""

    def __init__(self) -> None:
        self.dead_letters: dict[str, int] = {}

    def journal(self, event: dict, partition_key: str) -> None:
        return None

    def dead_letter(self, raw: RawRecord, reason: str, detail: str) -> None:
        self.dead_letters[reason] = self.dead_letters.get(reason, 0) + 1
