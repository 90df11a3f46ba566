"""The record-to-file pipeline shared by the live worker and replay.

source batch -> decode -> windowing (per partition) -> assemble -> sink -> facts/checkpoint.

It never imports Kafka or Faust: the driver hands it raw records and gets back what to publish
(journal events, dead letters) and which offsets are safe to commit.  Writing a file is split in
two so that the driver can run the blocking I/O in a thread: ``write_cut`` touches only the
assembler and the sink; ``record_outcome`` updates state on the driver's thread.  The order of
the durable steps after a write is ``pipeline/committer.py``'s.

Why ``FilePipeline`` is longer than this project's 250 lines per class: it holds each owned
partition's stage and moves parts between the units that do the work (``intake.py`` admits and
projects, ``spools.py`` streams, ``writer.py`` writes, ``parts.py`` retries and halts,
``checkpoints.py`` keeps the commit points); what is left is that state and those moves, which
split further would pass the same per-partition maps between classes.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import cast

from stream_app.codecs import DecodeError, Decoder
from stream_app.codecs.carried import CarriedDecoder
from stream_app.codecs.repartition import FrontierMarker, RepartitionFormatError, RoutedRun
from stream_app.codecs.repartition import decode as decode_repartition
from stream_app.core.assembly import Assembler
from stream_app.core.records import RawRecord, SourceRecord, is_redriven
from stream_app.core.routing import WindowCollector, repartition_partition
from stream_app.core.spool import RecordSpill
from stream_app.core.structured.assembler import StructuredAssembler
from stream_app.core.template import AssemblyError
from stream_app.core.windows import (
    TP,
    Checkpoint,
    FileCut,
    FileKey,
    LateRecord,
    Output,
    PartitionWindower,
    WindowAssigner,
    WindowClosed,
    WindowFacts,
    WindowOpened,
    WindowPolicy,
)
from stream_app.ops.faults import failpoint
from stream_app.ops.metrics import Metrics
from stream_app.pipeline.checkpoints import CheckpointLedger
from stream_app.pipeline.intake import Projection, take_batch
from stream_app.pipeline.journal import Journal
from stream_app.pipeline.parts import PartStates
from stream_app.pipeline.ports import HandedOverRun, Publisher, StateStore
from stream_app.pipeline.prepare_process import ProcessRunPreparer
from stream_app.pipeline.spools import PartSpools
from stream_app.pipeline.writer import FileWriter, WriteOutcome
from stream_app.sinks.base import FileStore

log = logging.getLogger(__name__)

@dataclass
class FlushSummary:
    files: int = 0
    records: int = 0
    bytes: int = 0
    failed: int = 0
    names: list[str] = field(default_factory=list)

    def add(self, other: FlushSummary) -> None:
        self.files += other.files
        self.records += other.records
        self.bytes += other.bytes
        self.failed += other.failed
        self.names.extend(other.names)


@dataclass(frozen=True, slots=True)
class WindowScope:
    """``fileScope: window``: this pipeline is the file stage, reading the repartition topic."""

    repartition_topic: str
    repartition_partitions: int
    sources: tuple[TP, ...]  # every input partition; a window closes once all have closed it
    decoder: CarriedDecoder  # routed values (in their carried form) -> records
    # structured mode: routed runs prepared in a helper process (projected, lines rendered)
    preparer: ProcessRunPreparer | None = None

    def owner_of(self, key: FileKey) -> TP:
        return (self.repartition_topic, repartition_partition(key, self.repartition_partitions))


Stage = PartitionWindower | WindowCollector


class FilePipeline:
    """Partition scope: source records -> files.  Window scope: routed records -> files."""

    def __init__(
        self,
        policy: WindowPolicy,
        group_by: Sequence[str | tuple[str, str]],
        decoder: Decoder,
        assembler: Assembler,
        sink: FileStore,
        state: StateStore,
        publisher: Publisher,
        journal: Journal,
        retry_initial_ms: int = 500,
        retry_max_ms: int = 30_000,
        mode: str = "template",
        spool_dir: Path | None = None,
        compression: str = "none",
        schema_ref: str | None = None,
        metrics: Metrics | None = None,
        window_scope: WindowScope | None = None,
        spill_dir: Path | None = None,
        pressure_cut: bool = False,
    ) -> None:
        self._policy = policy
        self._scope = window_scope
        # Routed batches prefetched for the prepare helper, with their messages, oldest first.
        self._read_ahead: deque[tuple[object, list[RoutedRun | FrontierMarker | str | None]]] = deque()
        self._assigner = WindowAssigner(policy, group_by)
        self._decoder = decoder
        self._assembler = assembler
        self.sink = sink
        self._state = state
        self._publisher = publisher
        self._journal = journal
        self._mode = mode
        self._windowers: dict[TP, Stage] = {}
        self._parts = PartStates(journal, publisher, metrics, retry_initial_ms, retry_max_ms)
        self._writer = FileWriter(assembler, sink, mode, compression, schema_ref, policy.part_limits.max_file_bytes)
        # Checkpoints written to the state store, and those confirmed durable (the commit gate).
        self._checkpoints = CheckpointLedger(state, lambda previous, new: new.offset > previous.offset)
        # Facts of finalized parts and idle closes, persisted only once their journal events are
        # durable (see persist_facts): a restart then re-finalizes a part rather than losing its
        # `created` event.  Event ids are deterministic, so a re-sent event is a duplicate to drop.
        self._unpersisted_facts: dict[FileKey, WindowFacts] = {}
        self.failing = False  # some cut is waiting for a retry
        # Window scope: repartition partitions halted at a record the file stage cannot read (a
        # damaged topic, or a newer worker's format during a rolling upgrade) and why.  Nothing
        # of the partition from that record on is processed or committed; other partitions go on,
        # and a restart of a fixed (or upgraded) worker reads the record again.
        self.damaged: dict[TP, str] = {}
        # The live worker's ownership check, run (in the writer thread) just before a file is put
        # in place, given the partition that owns it: raises NotOwner once that is lost.
        self.confirm_owner: Callable[[TP, str], None] | None = None
        self._projection = Projection(assembler, None if window_scope is None else policy.part_limits.value_fields) \
            if isinstance(assembler, StructuredAssembler) else None
        # Streaming mode: parts are written to spool files as records arrive (flat memory).
        self._spools = PartSpools(spool_dir, assembler, self.owner_of) if spool_dir is not None else None
        self._metrics = metrics
        # Backpressure: where open parts' records wait on disk (a temporary directory when
        # None), or, with pressure_cut (worker.pressureCut), the early cut that makes files
        # depend on timing.
        self._spill_dir = spill_dir
        self._pressure_cut = pressure_cut

    @property
    def metrics(self) -> Metrics | None:
        return self._metrics

    @metrics.setter
    def metrics(self, metrics: Metrics | None) -> None:
        self._metrics = self._parts.metrics = metrics

    # -- partitions -------------------------------------------------------------------------
    def owner_of(self, key: FileKey) -> TP:
        """The partition of this stage's input whose state holds the key's files."""
        return self._scope.owner_of(key) if self._scope is not None else key.tp

    def windower(self, tp: TP) -> PartitionWindower:
        """The partition-scope state machine of a source partition."""
        stage = self.stage(tp)
        assert isinstance(stage, PartitionWindower)
        return stage

    def collector(self, tp: TP) -> WindowCollector:
        """The window-scope state machine of a repartition partition."""
        stage = self.stage(tp)
        assert isinstance(stage, WindowCollector)
        return stage

    def stage(self, tp: TP) -> Stage:
        windower = self._windowers.get(tp)
        if windower is None and self._scope is not None:
            checkpoint = self._state.get_checkpoint(tp)
            on_spool = None
            if self._spools is not None:
                self._spools.reset(tp)
                on_spool = self._spools.spool_routed
            plan = None if self._spools is None else \
                partial(self._spools.plan_streamed, self._policy.part_limits, self._decode_routed)
            windower = self._windowers[tp] = WindowCollector(tp[0], tp[1], self._policy, self._scope.sources,
                                                             checkpoint, self._state.get_facts, on_spool, plan)
            self._checkpoints.restored(tp, checkpoint)
        if windower is None:
            checkpoint = self._state.get_checkpoint(tp)
            on_append = None
            if self._spools is not None:
                self._spools.reset(tp)
                on_append = self._spools.append
            windower = PartitionWindower(tp[0], tp[1], self._policy, self._assigner, checkpoint,
                                         self._state.get_facts, on_append)
            self._windowers[tp] = windower
            self._checkpoints.restored(tp, checkpoint)
        return windower

    def revoke(self, tps: Sequence[TP]) -> None:
        """Forget partitions this worker no longer owns: their records are re-read by the new owner."""
        for tp in tps:
            windower = self._windowers.pop(tp, None)
            if windower is not None:
                windower.discard_spills()
            self.damaged.pop(tp, None)  # the new owner meets (and reports) it again
            self._checkpoints.forget(tp)
            self._parts.forget(tp, self.owner_of)
            for key in [k for k in self._unpersisted_facts if self.owner_of(k) == tp]:
                del self._unpersisted_facts[key]
            if self._spools is not None:
                self._spools.revoke(tp)

    def partitions(self) -> list[TP]:
        return list(self._windowers)

    @property
    def buffered_records(self) -> int:
        return sum(w.buffered_records for w in self._windowers.values())

    def open_windows(self) -> int:
        return sum(len(w.open_windows) for w in self._windowers.values())

    # -- input ------------------------------------------------------------------------------
    def prefetch(self, raws: Sequence[RawRecord]) -> None:
        """The batch ``process`` gets next: its decoding may start before that call."""
        self._decoder.prefetch(raws)

    def process(self, raws: Sequence[RawRecord], now_wall_ms: int) -> None:
        """Decode and window a batch (records of one partition in offset order, or mixed)."""
        projection = self._projection

        def window(raw: RawRecord, record: SourceRecord, windower: PartitionWindower) -> None:
            if projection is not None:
                record = projection.attach(record)
            self._handle_outputs(windower.process(record, now_wall_ms, is_redriven(raw)), raw)

        # decoded in bulk (in a helper process when configured), one result per record in order
        take_batch(raws, self._decoder.decode_many(raws), self._policy, self.windower, window,
                   self._publisher.dead_letter)

    @property
    def prepares_ahead(self) -> bool:
        """Whether routed batches are prepared in a helper process: given to ``prefetch_routed``
        when fetched, they are best taken by ``process_routed`` a fetch later."""
        return self._preparer() is not None

    def _preparer(self) -> ProcessRunPreparer | None:
        # a streaming part keeps its entries on disk and renders them at the write
        return None if self._scope is None or self._spools is not None else self._scope.preparer

    def prefetch_routed(self, raws: Sequence[RawRecord]) -> None:
        """The routed batch ``process_routed`` gets next: the prepare helper starts on its runs."""
        preparer = self._preparer()
        if preparer is None or not raws:
            return
        messages = [_read_routed(raw) for raw in raws]
        self._read_ahead.append((raws, messages))
        preparer.prefetch(raws, [(m.source, m.records) for m in messages if type(m) is RoutedRun])

    def process_routed(self, raws: Sequence[RawRecord | HandedOverRun], now_wall_ms: int) -> None:
        """Window scope: a batch of the repartition topic (routed runs and close frontiers), or
        of a replay's loopback, whose runs may come as records (``HandedOverRun``)."""
        assert self._scope is not None
        decoder = self._scope.decoder
        streaming = self._spools is not None
        preparer = self._preparer()
        messages = self._messages(raws)
        prepared: Iterator[list[SourceRecord] | DecodeError] = iter(())
        if preparer is not None:  # each run's records, prepared ahead in the helper as this loop goes
            prepared = preparer.prepare_many([(m.source, m.records) for m in messages if type(m) is RoutedRun], raws)
        for raw, message in zip(raws, messages):
            run = next(prepared) if preparer is not None and type(message) is RoutedRun else None
            tp = (raw.topic, raw.partition)
            if tp in self.damaged:
                continue
            collector = self.collector(tp)
            position = raw.offset
            if collector.already_processed(position):
                continue
            if type(raw) is HandedOverRun:
                assert not streaming  # the spools store encoded entries (replay/run.py LoopbackSender)
                records = raw.records
                if self._projection is not None:
                    records = [self._projection.carried(record) for record in records]
                self._handle_outputs(collector.add_records(position, raw.key, raw.source, records, now_wall_ms))
                continue
            assert type(raw) is RawRecord
            if isinstance(message, FrontierMarker):
                self._handle_outputs(collector.add_frontier(position, message.source, message.frontier))
                continue
            if not isinstance(message, RoutedRun):  # the routing stage read (and validated) these
                self._halt_damaged(raw, str(message))  # values: an error is a damaged topic
                continue
            if streaming:  # the entries go to the window's spools, decoded when the window is written
                self._handle_outputs(collector.add_records(position, message.key, message.source,
                                                           message.records, now_wall_ms))
                continue
            if run is None:
                try:
                    run = decoder.decode_run(message.source, message.records)
                except DecodeError as exc:
                    run = exc
                if self._projection is not None and not isinstance(run, DecodeError):
                    run = [self._projection.carried(record) for record in run]
            if isinstance(run, DecodeError):
                self._halt_damaged(raw, f"{run.reason}: {run.detail}")
                continue
            self._handle_outputs(collector.add_records(position, message.key, message.source, run, now_wall_ms))

    def _messages(self, raws: Sequence[RawRecord | HandedOverRun]) -> list[RoutedRun | FrontierMarker | str | None]:
        """The batch's messages: read when it was prefetched, or now.  Batches read ahead before
        this one were dropped (a rebalance), and are forgotten."""
        while self._read_ahead:
            batch, messages = self._read_ahead.popleft()
            if batch is raws:
                return messages
        return [_read_routed(raw) for raw in raws]

    def _halt_damaged(self, raw: RawRecord, why: str) -> None:
        reason = (f"repartition record {raw.topic}/{raw.partition}@{raw.offset} cannot be read "
                  f"({why}); the partition waits from there (a damaged topic, or a "
                  f"newer worker's format: upgrade this worker)")
        self.damaged[(raw.topic, raw.partition)] = reason
        log.error("%s", reason)  # once per partition: its later records are skipped unread

    def _decode_routed(self, raws: list[RawRecord]) -> Iterator[SourceRecord]:
        """Routed values of a streamed part, read back from its spools (raises on a damaged one)."""
        assert self._scope is not None
        for record in self._scope.decoder.decode_many(raws):
            if type(record) is not SourceRecord:
                raise cast(DecodeError, record)
            yield self._projection.carried(record) if self._projection is not None else record

    def prepare(self, raw: RawRecord) -> SourceRecord:
        """Decode (and in structured mode project) one record; raises on bad input (replay)."""
        record = self._decoder.decode(raw)
        return self._projection.strict(record) if self._projection is not None else record

    def _handle_outputs(self, outputs: list[Output], raw: RawRecord | None = None) -> None:
        for out in outputs:
            if isinstance(out, WindowOpened):
                self._publisher.journal(self._journal.opened(out.key), out.key.id)
            elif isinstance(out, WindowClosed):
                if out.facts is not None:
                    self._unpersisted_facts[out.key] = out.facts
                self._publisher.journal(self._journal.closed(out.key, out.parts, out.reason), out.key.id)
            elif isinstance(out, LateRecord):
                assert raw is not None and raw.offset == out.record.offset
                self._publisher.dead_letter(
                    raw, "LATE_RECORD", f"window {out.key.id} was already closed by the watermark"
                )
            # FileCut: held by its windower as pending until finalized

    def tick(self, now_wall_ms: int, caught_up: Callable[[TP], bool] = lambda tp: True) -> None:
        """Wall-clock cuts: idle partitions and the optional flush interval.

        A partition only counts as idle when the consumer has caught up with it: a partition that
        merely waited for the fetcher while others were read is not idle.
        """
        for tp, windower in list(self._windowers.items()):
            if caught_up(tp):
                self._handle_outputs(windower.cut_idle(now_wall_ms))
            self._handle_outputs(windower.cut_interval(now_wall_ms))

    def relieve_pressure(self) -> bool:
        """Move the records of the largest open part (window scope: window) of the partition
        holding the most out of memory: to disk until it is cut, which changes no file; or, with
        pressure_cut, cut it early.  False when nothing in memory can be moved."""
        best = max(self._windowers.items(), key=lambda item: item[1].buffered_records, default=None)
        if best is None:
            return False
        tp, windower = best
        if self._pressure_cut:
            return bool(windower.cut_largest())
        if self._spill_dir is None:
            self._spill_dir = Path(tempfile.mkdtemp(prefix="stream-app-spill-"))
        spill_dir = self._spill_dir / tp[0] / str(tp[1])

        def spill_for(key: FileKey) -> RecordSpill:
            return RecordSpill(spill_dir / f"{hashlib.sha1(key.id.encode()).hexdigest()[:20]}.spill")

        return windower.spill_largest(spill_for) > 0

    # -- finalization -----------------------------------------------------------------------
    def pending_cuts(self) -> list[FileCut]:
        return [cut for windower in self._windowers.values() for cut in windower.pending_cuts()]

    def due_cuts(self, now_wall_ms: int) -> list[FileCut]:
        """Cuts to write now, in (window, part) order; a part backing off holds back later parts."""
        due = []
        for windower in self._windowers.values():
            waiting: set[FileKey] = set()
            for cut in windower.pending_cuts():
                if cut.key in waiting or self._parts.backing_off(cut, now_wall_ms):
                    waiting.add(cut.key)
                else:
                    due.append(cut)
        return due

    def is_pending(self, cut: FileCut) -> bool:
        """The cut still waits to be written by this worker (its partition was not revoked)."""
        windower = self._windowers.get(self.owner_of(cut.key))
        return windower is not None and windower.is_pending(cut)

    def ready_to_write(self, cut: FileCut) -> bool:
        """Pending here, and every earlier part of its window is finalized (parts go in order)."""
        windower = self._windowers.get(self.owner_of(cut.key))
        return windower is not None and windower.is_pending(cut) and not windower.waits_for_earlier_part(cut)

    def write_cut(self, cut: FileCut) -> WriteOutcome:
        """Assemble and store one cut.  Thread-safe: touches only the assembler and the sink."""
        started = time.perf_counter()
        outcome = self._write_cut(cut)
        outcome.seconds = time.perf_counter() - started
        return outcome

    def _write_cut(self, cut: FileCut) -> WriteOutcome:
        if not cut.segments:
            part = self._spools.parts.get((cut.key, cut.part)) if self._spools is not None else None
            return self._writer.write(cut, part, self._confirm(cut))
        assert self._spools is not None  # segments: a streamed window-scope cut
        if not self._spools.has_runs(cut):
            return WriteOutcome(error_class="PARTITION_REVOKED", error_message="the partition was revoked")
        try:
            writer = self._spools.streamed_part(cut, self._decode_routed)
        except AssemblyError as exc:
            return WriteOutcome(error_class=exc.error_class, error_message=str(exc), assembly_failed=True,
                                source=exc.source)
        try:
            return self._writer.write(cut, writer, self._confirm(cut))
        finally:
            writer.discard()  # rendered again from the window's spools if the write is retried

    def _confirm(self, cut: FileCut) -> Callable[[str], None] | None:
        confirm = self.confirm_owner
        return None if confirm is None else partial(confirm, self.owner_of(cut.key))

    def record_outcome(self, cut: FileCut, outcome: WriteOutcome, now_wall_ms: int, summary: FlushSummary) -> bool:
        """Take a write's outcome into the part's state; True when the file is written (and its
        facts wait to be persisted)."""
        if not self.is_pending(cut):
            return False  # partition revoked while the write ran; the new owner re-creates the file
        windower = self._windowers[self.owner_of(cut.key)]
        if outcome.result is None:
            self._parts.failed(cut, outcome, now_wall_ms)
            summary.failed += 1
            return False
        failpoint("pipeline.after-write")  # file renamed, nothing persisted or committed yet
        self._parts.written(cut)
        writer = self._spools.parts.pop((cut.key, cut.part), None) if self._spools is not None else None
        if writer is not None:
            writer.discard()
        result = outcome.result
        self._publisher.journal(self._journal.created(cut, result.name, result.bytes, result.sha256,
                                                      result.location, result.url), cut.key.id)
        self._unpersisted_facts[cut.key] = facts = windower.mark_finalized(cut)
        if facts.closed and self._spools is not None and self._spools.holds_runs:
            self._spools.drop_window(cut.key)
        if self.metrics is not None:
            self.metrics.files_finalized.labels(self._mode, cut.reason).inc()
            self.metrics.records_per_file.observe(cut.count)
            self.metrics.bytes_written.inc(0 if result.already_present else result.bytes)
            self.metrics.finalize_seconds.observe(outcome.seconds)
        log.info("finalized %s (%d records, %d bytes, %s)", result.name, cut.count, result.bytes, cut.reason,
                 extra={"file_key": cut.key.id, "part": cut.part})
        summary.files += 1
        summary.records += cut.count
        summary.bytes += result.bytes
        summary.names.append(result.name)
        return True

    @property
    def halted(self) -> dict[tuple[FileKey, int], str]:
        """Parts halted by a terminal error, and why."""
        return self._parts.halted

    @property
    def halted_reason(self) -> str | None:
        return next(iter(self.damaged.values()), None) or next(iter(self.halted.values()), None)

    def journal_summary(self, summary: FlushSummary) -> None:
        self.failing = self._parts.failing
        if summary.files or summary.failed:
            self._publisher.journal(
                self._journal.flush_summary(summary.files, summary.records, summary.bytes, summary.failed),
                self._journal.worker_id,
            )

    def update_gauges(self, now_wall_ms: int) -> None:
        if self.metrics is None:
            return
        open_ages = [now_wall_ms - since for w in self._windowers.values() for since in w.open_since()]
        self.metrics.open_windows.set(self.open_windows())
        self.metrics.oldest_window_age.set(max(open_ages, default=0) / 1000)
        uncommitted = 0
        for tp, windower in self._windowers.items():
            checkpoint = self._checkpoints.confirmed(tp)
            if windower.next_offset is not None:
                uncommitted += windower.next_offset - (checkpoint.offset if checkpoint else 0)
        self.metrics.uncommitted.set(uncommitted)

    # -- commit -----------------------------------------------------------------------------
    @property
    def has_unpersisted_facts(self) -> bool:
        return bool(self._unpersisted_facts)

    def persist_facts(self) -> None:
        """Persist the facts of parts finalized since the last call.

        The live driver calls this only after the journal events of those parts are delivered.
        """
        self._parts.journaled()
        for key, facts in self._unpersisted_facts.items():
            self._state.put_facts(key, facts)
        self._unpersisted_facts.clear()

    def persisted_checkpoint(self, tp: TP) -> Checkpoint | None:
        """The last checkpoint confirmed durable: what the consumer may commit."""
        return self._checkpoints.confirmed(tp)

    def advance_checkpoints(self) -> dict[TP, Checkpoint]:
        """Write and return the checkpoints that moved; once the driver knows they are durable
        it calls ``confirm_checkpoints`` and commits below them."""
        self._parts.durable()  # the driver delivered the facts persisted before this call
        self.persist_facts()  # a checkpoint never runs ahead of the facts below it
        moved: dict[TP, Checkpoint] = {}
        for tp, windower in self._windowers.items():
            checkpoint = windower.checkpoint()
            if checkpoint is None:
                continue
            if self._checkpoints.write(tp, checkpoint):
                failpoint("pipeline.after-checkpoint")
                moved[tp] = checkpoint
        return moved

    def confirm_checkpoints(self) -> None:
        """Everything written by ``advance_checkpoints`` so far is durable."""
        self._checkpoints.confirm(self._windowers)


def _read_routed(raw: RawRecord | HandedOverRun) -> RoutedRun | FrontierMarker | str | None:
    """A repartition record's message, or why it cannot be read (None: a replay's handed-over run)."""
    if not isinstance(raw, RawRecord):
        return None
    try:
        return decode_repartition(raw.value if raw.value is not None else b"")
    except RepartitionFormatError as exc:
        return str(exc)
    except DecodeError as exc:
        return f"{exc.reason}: {exc.detail}"
