"""Replay's drivers: the same core and stages as the live worker, over a bounded input, without
Faust.  ``run_records`` processes a complete sequence of raw records and closes every window at
the end of the input (a replay of an offset or time range); ``run_window_records`` does the same
for business files, both stages in one process through ``LoopbackSender``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence

from stream_app.core.records import RawRecord, SourceRecord
from stream_app.core.windows import TP, FileKey
from stream_app.pipeline.committer import CommitRound, Committer
from stream_app.pipeline.files import FilePipeline, FlushSummary
from stream_app.pipeline.memory import ImmediateDurability, run_now
from stream_app.pipeline.ports import Durability, HandedOverRun
from stream_app.pipeline.routing import RoutingStage

END_OF_INPUT_MS = 2**62  # a wall-clock "now" after every window end: closes everything
PREFETCH_DEPTH = 8  # batches the decode helper holds beyond the one being windowed


def commit_due(files: FilePipeline, now_wall_ms: int, durability: Durability | None = None) -> FlushSummary:
    """One round of the committer over the file stage alone (partition scope, or a test)."""
    return _done(run_now(Committer(files, None, durability or ImmediateDurability()).commit(now_wall_ms)))


def _done(round_: CommitRound) -> FlushSummary:
    if round_.routed_lost is not None:  # not with a LoopbackSender, which loses nothing
        raise round_.routed_lost
    return round_.summary


def batches_ahead(raws: Iterable[RawRecord], batch_size: int,
                  prefetch: Callable[[Sequence[RawRecord]], None], depth: int = PREFETCH_DEPTH) -> Iterator[list[RawRecord]]:
    """``raws`` in batches, each handed to ``prefetch`` ``depth`` batches before it is yielded:
    the decode helper (``input.decodeProcess``) reads the next batches on the second core while
    this one is windowed, as the live worker's held batch does.  The last batch may be empty."""
    held: deque[list[RawRecord]] = deque()
    batch: list[RawRecord] = []
    for raw in raws:
        batch.append(raw)
        if len(batch) >= batch_size:
            prefetch(batch)
            held.append(batch)
            if len(held) > depth:
                yield held.popleft()
            batch = []
    if batch:
        prefetch(batch)
    yield from held
    yield batch


def run_records(pipeline: FilePipeline, raws: Iterable[RawRecord], batch_size: int = 10_000,
                durability: Durability | None = None, on_round: Callable[[FlushSummary], None] | None = None
                ) -> FlushSummary:
    """Partition scope over a bounded input: every window closes at the end of it.  ``on_round``
    gets each commit round's summary (the progress bar's files written)."""
    committer = Committer(pipeline, None, durability or ImmediateDurability())
    total = FlushSummary()
    for batch in batches_ahead(raws, batch_size, pipeline.prefetch):
        pipeline.process(batch, 0)
        _round(committer, 0, total, on_round)
    pipeline.tick(END_OF_INPUT_MS)
    _round(committer, END_OF_INPUT_MS, total, on_round)
    return total


def _round(committer: Committer, now_wall_ms: int, total: FlushSummary,
           on_round: Callable[[FlushSummary], None] | None) -> None:
    """One commit round of a replay driver: its summary is added to ``total`` and reported."""
    summary = _done(run_now(committer.commit(now_wall_ms)))
    total.add(summary)
    if on_round is not None:
        on_round(summary)


class LoopbackSender:
    """Both stages in one process: the file stage reads what the routing stage sends, in order,
    without a repartition topic (the bytes do not depend on where the records travel).

    ``hands_over``: routed runs reach the file stage as the routing stage's records, not encoded
    into a repartition record and decoded again (a quarter of the replay process's CPU).  The
    routing stage then reads the fields the files read too (``build_routing``), so the records are
    those the file stage would decode; streaming append (a spool directory) keeps the encoded
    entries, which its spools store."""

    def __init__(self, topic: str, hands_over: bool = False) -> None:
        self._topic = topic
        self.hands_over = hands_over
        self._next: dict[int, int] = {}
        self._queued: list[RawRecord | HandedOverRun] = []

    def _offset(self, partition: int) -> int:
        offset = self._next.get(partition, 0)
        self._next[partition] = offset + 1
        return offset

    def send(self, partition: int, key: bytes, value: bytes) -> None:
        self._queued.append(RawRecord(self._topic, partition, self._offset(partition), None, key, value))

    def send_records(self, partition: int, key: FileKey, source: TP, records: list[SourceRecord]) -> None:
        self._queued.append(HandedOverRun(self._topic, partition, self._offset(partition), key, source, records))

    def drain(self) -> list[RawRecord | HandedOverRun]:
        queued, self._queued = self._queued, []
        return queued


def run_window_records(routing: RoutingStage, files: FilePipeline, sender: LoopbackSender,
                       sources: Iterable[tuple[str, int]], raws: Iterable[RawRecord],
                       batch_size: int = 10_000, durability: Durability | None = None,
                       on_round: Callable[[FlushSummary], None] | None = None) -> FlushSummary:
    """Business files over a bounded input: route, collect, and close every window at the end.
    ``on_round`` gets each commit round's summary."""
    committer = Committer(files, routing, durability or ImmediateDurability())
    total = FlushSummary()

    def step(batch: list[RawRecord], now_wall_ms: int) -> None:
        routing.process(batch, now_wall_ms)
        files.process_routed(sender.drain(), now_wall_ms)
        _round(committer, now_wall_ms, total, on_round)

    routing.assign(sources, 0)
    for batch in batches_ahead(raws, batch_size, routing.prefetch):
        step(batch, 0)
    committer.idle_closed(routing.close_idle(END_OF_INPUT_MS, lambda tp: True))
    step([], END_OF_INPUT_MS)  # the routing checkpoints are durable: the idle closes are announced
    step([], END_OF_INPUT_MS)  # the file stage reads the announcements and writes what they closed
    return total


class CountingPublisher:
    """Replay publishes nothing: journal events are dropped, dead letters are counted by reason."""

    def __init__(self) -> None:
        self.dead_letters: dict[str, int] = {}

    def journal(self, event: dict, partition_key: str) -> None:
        return None

    def dead_letter(self, raw: RawRecord, reason: str, detail: str) -> None:
        self.dead_letters[reason] = self.dead_letters.get(reason, 0) + 1
