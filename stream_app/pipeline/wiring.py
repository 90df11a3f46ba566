"""Builds the pipeline's parts from the validated settings (shared by worker, replay, preflight)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stream_app.codecs import Decoder
from stream_app.codecs.avro import AvroDecoder, SchemaResolver
from stream_app.codecs.carried import CarriedDecoder, CarryingAvroDecoder
from stream_app.codecs.decode_process import ProcessAvroDecoder
from stream_app.codecs.json import JsonDecoder
from stream_app.codecs.registry import client_conf
from stream_app.config import AppSettings, ConfigError, S3SinkSettings
from stream_app.core.assembly import FileVariables
from stream_app.core.cycles import ClearingCycles
from stream_app.core.limits import PartLimits
from stream_app.core.structured.assembler import StructuredAssembler
from stream_app.core.structured.pack import SchemaPack, load_pack, pack_path
from stream_app.core.template import TemplateAssembler
from stream_app.core.windows import WindowPolicy
from stream_app.ops.metrics import Metrics
from stream_app.pipeline.files import FilePipeline, WindowScope
from stream_app.pipeline.journal import Journal
from stream_app.pipeline.ports import Publisher, RepartitionSender, StateStore, handing_over
from stream_app.pipeline.prepare_process import ProcessRunPreparer, RunPreparer
from stream_app.pipeline.routing import RoutingStage
from stream_app.sinks.base import FileStore
from stream_app.sinks.local import LocalSink


def clearing_cycles(settings: AppSettings) -> ClearingCycles:
    window = settings.worker.window
    return ClearingCycles(settings.worker.window_size_ms, window.timeZone, window.cutoff_ms)


def file_variables(settings: AppSettings) -> FileVariables:
    parties = settings.worker.parties
    return FileVariables(clearing_cycles(settings),
                         {} if parties is None else {"sender_id": parties.senderId, "receiver_id": parties.receiverId})


def part_limits(settings: AppSettings) -> PartLimits | None:
    """maxAmountPerFile / maxBytesPerFile as the core's limits (None: parts are cut by count)."""
    worker = settings.worker
    if worker.maxAmountPerFile is None and worker.maxBytesPerFile is None:
        return None
    weigh = None
    if worker.maxBytesPerFile is not None:
        weigh = build_assembler(settings).detail_weigher()
        if weigh is None:
            raise ConfigError(f"worker.maxBytesPerFile: pack {worker.schema_.id if worker.schema_ else ''} groups "
                              "its body lines, so a file's size is not a sum over its records; use maxRecordsPerFile")
    return PartLimits(worker.maxRecordsPerFile, worker.maxAmountPerFile, worker.totals.amountField,
                      worker.totals.currencyField,
                      None if worker.maxBytesPerFile is None else worker.maxBytesPerFile - worker.frameReserveBytes,
                      weigh, worker.maxBytesPerFile)


def window_policy(settings: AppSettings) -> WindowPolicy:
    worker = settings.worker
    cycles = clearing_cycles(settings)
    return WindowPolicy(
        size_ms=worker.window_size_ms,
        grace_ms=worker.window.graceMs,
        max_records_per_file=worker.maxRecordsPerFile,
        limits=part_limits(settings),
        late_records=worker.lateRecords,
        idle_timeout_ms=worker.window.idleTimeoutMs,
        flush_interval_ms=worker.flushIntervalMs,
        cycles=None if cycles.plain else cycles,
        min_event_ms=settings.input.min_event_ms,
        max_future_ms=settings.input.maxFutureMs,
        max_event_ms=settings.input.max_event_ms,
    )


def registry_conf(settings: AppSettings) -> dict[str, Any] | None:
    registry = settings.input.schemaRegistry
    return None if registry is None else client_conf(registry)


def json_decoder(settings: AppSettings) -> JsonDecoder:
    inp = settings.input
    return JsonDecoder(inp.eventTimeField, inp.decimalFields, inp.maxRecordBytes, inp.duplicateKeys, inp.jsonNumberAmounts)


def build_decoder(settings: AppSettings, carry: bool = False, reads: Sequence[str] | None = None,
                  time_as_millis: bool = False) -> Decoder:
    """The input codec; ``carry``: the routing stage's, whose records come with their carried form
    and may hold only the fields in ``reads`` (None: all), without the event-time field when
    ``time_as_millis`` (nothing reads it but as the record's epoch ms)."""
    inp = settings.input
    if inp.format == "json":
        return json_decoder(settings)
    if inp.decodeProcess:
        return ProcessAvroDecoder(inp.avroSchemas, registry_conf(settings), inp.eventTimeField, inp.maxRecordBytes,
                                  carry=carry, reads=reads, time_as_millis=time_as_millis)
    resolver = SchemaResolver(inp.avroSchemas, registry_conf(settings))
    return (CarryingAvroDecoder if carry else AvroDecoder)(resolver, inp.eventTimeField, inp.maxRecordBytes)


def build_routed_decoder(settings: AppSettings, fields: frozenset[str] | None = None) -> CarriedDecoder:
    """The file stage's: routed values in their carried form, decoded in this process; only
    ``fields`` of an Avro record are built when not None (the fields the files read)."""
    inp = settings.input
    if inp.format == "json":
        return CarriedDecoder(json_decoder(settings), None, inp.eventTimeField)
    resolver = SchemaResolver(inp.avroSchemas, registry_conf(settings))
    return CarriedDecoder(AvroDecoder(resolver, inp.eventTimeField, inp.maxRecordBytes), resolver, inp.eventTimeField,
                          fields)


def load_worker_pack(settings: AppSettings) -> SchemaPack:
    ref = settings.worker.schema_
    assert ref is not None
    return load_pack(pack_path(Path(settings.schemasDir), ref.id, ref.version), ref.xsd)


def build_assembler(settings: AppSettings) -> TemplateAssembler | StructuredAssembler:
    worker = settings.worker
    if worker.mode == "structured":
        return StructuredAssembler(load_worker_pack(settings), worker.fileNameTemplate, file_variables(settings),
                                   worker.xsdProcess)
    assert worker.recordTemplate is not None
    return TemplateAssembler(
        worker.headerTemplate,
        worker.recordTemplate,
        worker.footerTemplate,
        worker.fileNameTemplate,
        amount_field=worker.totals.amountField,
        currency_field=worker.totals.currencyField,
        variables=file_variables(settings),
        negative=(None if worker.totals.negative is None
                  else (worker.totals.negative.field, frozenset(worker.totals.negative.values))),
    )


def build_sink(settings: AppSettings) -> FileStore:
    sink = settings.sink
    if isinstance(sink, S3SinkSettings):
        from stream_app.sinks.s3 import S3Sink  # boto3 is only imported when S3 is configured

        return S3Sink(sink)
    return LocalSink(sink.localTargetDir, sink.file_mode_bits, sink.manifest)


# Under spoolDir: where backpressure moves open parts' records ('~' is in no topic name, so it
# never meets a streaming spool's <topic>/<partition> directory).
SPILL_DIR = "pressure~spill"


def prepare_worker_spool(settings: AppSettings) -> Path | None:
    """The worker's spool directory in streaming mode, else None.

    Streaming is a start-time setting: a configured spool directory is emptied when the worker
    starts in either mode, so spools of a run in the other mode never survive a restart (their
    records are above the committed offsets and are read again).
    """
    if settings.spoolDir:
        shutil.rmtree(settings.spoolDir, ignore_errors=True)
    if not settings.worker.streamingAppendEnabled:
        return None
    return Path(settings.spoolDir or tempfile.mkdtemp(prefix=f"{settings.appId}-spool-"))


def window_scope(settings: AppSettings, sources: tuple[tuple[str, int], ...] | None = None,
                 fields: frozenset[str] | None = None,
                 assembler: TemplateAssembler | StructuredAssembler | None = None) -> WindowScope | None:
    """The file stage's view of business files; None in partition scope.  ``sources``: the input
    partitions a window waits for (all of them live; the replayed ones in a replay); ``fields``:
    the record fields the files read (None: all); ``assembler``: the file stage's, whose pack the
    prepare helper's fallback uses instead of loading it again."""
    if settings.worker.fileScope != "window":
        return None
    decoder = build_routed_decoder(settings, fields)
    structured = assembler if isinstance(assembler, StructuredAssembler) else None
    return WindowScope(settings.repartition_topic, settings.kafka.repartition_partitions,
                       settings.input_partitions if sources is None else sources, decoder,
                       _process_preparer(settings, decoder, fields, structured))


def run_preparer(settings: AppSettings, fields: frozenset[str] | None, decoder: CarriedDecoder | None = None,
                 assembler: StructuredAssembler | None = None) -> RunPreparer | None:
    """Structured mode: what prepares a routed run's rows ahead, with their detail lines (the
    prepare helper's, and the worker's while that helper cannot); None for a pack whose body
    groups its records, or in template mode.  ``assembler``: one already built (else the pack
    is loaded here, as in the helper)."""
    worker = settings.worker
    if worker.mode != "structured":
        return None
    if assembler is None:
        assembler = StructuredAssembler(load_worker_pack(settings), worker.fileNameTemplate, file_variables(settings))
    rows = assembler.row_preparer()
    if rows is None:
        return None
    totals = worker.totals  # what maxAmountPerFile reads of a record's value
    return RunPreparer(decoder or build_routed_decoder(settings, fields), rows,
                       (totals.amountField, *((totals.currencyField,) if totals.currencyField else ())))


def _process_preparer(settings: AppSettings, decoder: CarriedDecoder, fields: frozenset[str] | None,
                      assembler: StructuredAssembler | None) -> ProcessRunPreparer | None:
    """With ``input.decodeProcess``, the file stage prepares routed runs in a helper process (a
    streaming part keeps its entries on disk, and renders them at the write, as before)."""
    if not settings.input.decodeProcess or settings.worker.streamingAppendEnabled:
        return None
    local = run_preparer(settings, fields, decoder, assembler)
    if local is None:
        return None
    return ProcessRunPreparer({"settings": settings.model_dump(mode="json", by_alias=True),
                               "fields": None if fields is None else sorted(fields)}, local)


def build_routing(settings: AppSettings, state: StateStore, publisher: Publisher,
                  sender: RepartitionSender) -> RoutingStage:
    worker = settings.worker
    assembler = build_assembler(settings)
    # Routing reads the event time and the groupBy fields, and all of a record it validates;
    # handing its records over to the file stage (replay), the fields the files read too.
    validates = isinstance(assembler, StructuredAssembler) and assembler.on_invalid_record == "deadLetter"
    time_field = settings.input.eventTimeField
    reads: list[str] | None = None if validates else [time_field, *worker.group_fields]
    read_whole = set(worker.group_fields)  # fields read as values, not only for the record's epoch ms
    if reads is not None and handing_over(sender) is not None:
        files = files_read(settings, assembler)
        # a name that is a dict's attribute (``record.get(...)``) needs the whole record (codecs/carried.py)
        reads = None if files is None or any(hasattr(dict, name) for name in files) \
            else list(dict.fromkeys([*reads, *sorted(files)]))
        read_whole |= files or set()
    decoder = build_decoder(settings, carry=True, reads=reads,
                            time_as_millis=reads is not None and time_field not in read_whole)
    return RoutingStage(window_policy(settings), worker.group_specs, decoder,
                        assembler if isinstance(assembler, StructuredAssembler) else None, state, publisher,
                        sender, settings.kafka.repartition_partitions, settings.input.maxRecordBytes)


def files_read(settings: AppSettings, assembler: TemplateAssembler | StructuredAssembler) -> frozenset[str] | None:
    """The record fields the file stage builds from a routed value (None: all): what the
    templates read, or the input fields the pack's mapping reads, with the groupBy fields and
    the fields the part limits weigh."""
    worker = settings.worker
    if isinstance(assembler, TemplateAssembler):
        read = assembler.fields_read()
        return None if read is None else read | set(worker.group_fields)
    totals = worker.totals
    return frozenset(assembler.pack.input_names | set(worker.group_fields)
                     | {totals.amountField, *((totals.currencyField,) if totals.currencyField else ())})


def build_pipeline(settings: AppSettings, state: StateStore, publisher: Publisher, sink: FileStore | None = None,
                   spool_dir: Path | None = None, metrics: Metrics | None = None,
                   sources: tuple[tuple[str, int], ...] | None = None) -> FilePipeline:
    """Partition scope: the whole pipeline; window scope: the file stage."""
    worker = settings.worker
    assembler = build_assembler(settings)
    scope = window_scope(settings, sources, files_read(settings, assembler), assembler)
    decoder = build_decoder(settings)  # partition scope (window scope: the scope's decoder)
    return FilePipeline(
        window_policy(settings),
        worker.group_specs,
        decoder,
        assembler,
        sink or build_sink(settings),
        state,
        publisher,
        Journal(settings.workerId, settings.appId),
        retry_initial_ms=worker.writeRetryInitialMs,
        retry_max_ms=worker.writeRetryMaxMs,
        mode=worker.mode,
        spool_dir=spool_dir,
        compression=settings.sink.compression,
        schema_ref=f"{worker.schema_.id}/{worker.schema_.version}" if worker.schema_ else None,
        metrics=metrics,
        window_scope=scope,
        spill_dir=Path(settings.spoolDir) / SPILL_DIR if settings.spoolDir else None,
        pressure_cut=worker.pressureCut,
    )
