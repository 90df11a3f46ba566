"""Start-time checks: everything that can be known wrong before the first record arrives."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from jinja2 import meta

from stream_app.config import AppSettings, ConfigError
from stream_app.core.assembly import AssemblyError
from stream_app.core.records import SourceRecord
from stream_app.core.spool import MemorySpool
from stream_app.core.structured.assembler import StructuredAssembler
from stream_app.core.structured.pack import PackError, SchemaPack
from stream_app.core.template import make_environment
from stream_app.core.windows import FileCut, FileKey
from stream_app.pipeline.wiring import build_assembler, build_sink, json_decoder, load_worker_pack, window_policy
from stream_app.sinks.base import SinkError

_SAMPLE_TIME = datetime(2026, 1, 1, 0, 0, tzinfo=UTC)
_SAMPLE_START_MS = int(_SAMPLE_TIME.timestamp() * 1000)


def sample_value(schema: Any) -> Any:
    """A plausible value for an Avro schema, so templates can be rendered before any data."""
    if isinstance(schema, list):  # union: first non-null branch
        branches = [b for b in schema if b != "null"]
        return sample_value(branches[0]) if branches else None
    if isinstance(schema, str):
        return {"string": "SAMPLE", "bytes": b"", "int": 1, "long": 1, "float": 1.0, "double": 1.0,
                "boolean": True, "null": None}.get(schema, "SAMPLE")
    logical = schema.get("logicalType")
    if logical == "decimal":
        return Decimal(1).scaleb(-int(schema.get("scale", 0)))
    if logical in ("timestamp-millis", "timestamp-micros"):
        return _SAMPLE_TIME
    if logical == "date":
        return _SAMPLE_TIME.date()
    kind = schema.get("type")
    if kind == "record":
        return {f["name"]: sample_value(f["type"]) for f in schema["fields"]}
    if kind == "enum":
        return schema["symbols"][0]
    if kind == "array":
        return [sample_value(schema["items"])]
    if kind == "map":
        return {"key": sample_value(schema["values"])}
    if kind == "fixed":
        return b"\0" * int(schema["size"])
    return sample_value(kind)


def _sample_file_records(settings: AppSettings) -> list[dict]:
    """input.sampleFile, each line decoded as the input codec would (JSON: decimals, event time)."""
    from stream_app.codecs import DecodeError
    from stream_app.core.records import RawRecord

    path = settings.input.sampleFile
    assert path is not None
    try:
        lines = [line for line in Path(path).read_bytes().splitlines() if line.strip()]
    except OSError as exc:
        raise ConfigError(f"input.sampleFile: cannot read {path}: {exc.strerror}") from None
    if not lines:
        raise ConfigError(f"input.sampleFile: {path} has no records")
    decoder = json_decoder(settings)
    samples = []
    for number, line in enumerate(lines, 1):
        try:
            samples.append(decoder.decode(RawRecord("sample", 0, number, None, None, line)).value)
        except DecodeError as exc:
            raise ConfigError(f"input.sampleFile: {path} line {number}: {exc.reason}: {exc.detail}") from None
    return samples


def _sample_records(settings: AppSettings) -> list[dict] | None:
    if settings.input.sampleFile is not None:
        return _sample_file_records(settings)
    if settings.input.format != "avro" or settings.input.schemaRegistry or not settings.input.avroSchemas:
        return None
    samples = []
    for schema_id, path in sorted(settings.input.avroSchemas.items()):
        try:
            schema = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"input.avroSchemas.{schema_id}: cannot read {path}: {exc}") from None
        value = sample_value(schema)
        if not isinstance(value, dict):
            raise ConfigError(f"input.avroSchemas.{schema_id}: {path} is not a record schema")
        for name in [settings.input.eventTimeField, *settings.worker.group_fields]:
            if name not in value:
                key = "input.eventTimeField" if name == settings.input.eventTimeField else "worker.groupBy"
                raise ConfigError(f"{key}: field {name!r} is not in schema {path}")
        samples.append(value)
    return samples


def _check_pack_inputs(settings: AppSettings, pack: SchemaPack, samples: list[dict]) -> None:
    for sample in samples:
        missing = sorted(name for name in pack.input_names if name not in sample)
        if missing:
            raise ConfigError(f"worker.schema: {pack.path}: fields: [undefined-field] the pack maps from "
                              f"{missing}, which the input schema does not have")


_PARTITION_VARIABLES = ("partition", "topic")


def _check_scope(settings: AppSettings) -> None:
    """Business files span every input partition: their templates cannot name one."""
    if settings.worker.fileScope != "window":
        return
    env = make_environment()
    templates = {"fileNameTemplate": settings.worker.fileNameTemplate}
    if settings.worker.mode == "template":
        templates.update(headerTemplate=settings.worker.headerTemplate, footerTemplate=settings.worker.footerTemplate)
    if settings.worker.mode == "structured":
        pack = load_worker_pack(settings)
        used = pack.file_variables_used() & set(_PARTITION_VARIABLES)
        if used:
            raise ConfigError(
                f"worker.schema: {pack.path}: the header or trailer reads {sorted(used)[0]!r}, but with "
                "worker.fileScope: window a file holds every input partition's records; use a pack version "
                "without it, or set worker.fileScope: partition")
    for key, source in templates.items():
        used = meta.find_undeclared_variables(env.parse(source)) & set(_PARTITION_VARIABLES)
        if used:
            raise ConfigError(
                f"worker.{key}: uses {sorted(used)[0]!r}, but with worker.fileScope: window a file holds every "
                "input partition's records; remove it, or set worker.fileScope: partition for files per partition")


def _sample_key(settings: AppSettings, topic: str, partition: int, start: int,
                group: tuple[tuple[str, str], ...] = ()) -> FileKey:
    policy = window_policy(settings)
    start = policy.start_of(start)
    if settings.worker.fileScope == "window":
        return FileKey(None, None, start, policy.end_of(start), group)
    return FileKey(topic, partition, start, policy.end_of(start), group)


def _sample_group(settings: AppSettings, value: dict) -> tuple[tuple[str, str], ...]:
    """The group values a file of ``value`` gets (``group.<field>`` in names, headers, footers)."""
    return tuple((name, "G1" if value.get(name) is None else str(value[name])) for name in settings.worker.group_names)


def _check_file_names(settings: AppSettings) -> None:
    """Distinct file keys must render distinct names, or two files would collide."""
    assembler = build_assembler(settings)
    group = tuple((name, "G1") for name in settings.worker.group_names)
    first = _SAMPLE_START_MS
    base = _sample_key(settings, "topic", 0, first, group)
    variants = {}
    if settings.worker.fileScope == "partition":
        variants["partition"] = (_sample_key(settings, "topic", 1, first, group), 0)
    variants["window"] = (_sample_key(settings, "topic", 0, base.window_end_ms, group), 0)
    variants["part"] = (base, 1)
    if settings.worker.fileScope == "partition" and len(settings.kafka.inputTopics) > 1:
        variants["topic"] = (_sample_key(settings, "other-topic", 0, first, group), 0)
    for name in settings.worker.group_names:
        other = tuple((n, "G2" if n == name else "G1") for n, _ in group)
        variants[f"group field {name}"] = (_sample_key(settings, "topic", 0, first, other), 0)
    try:
        base_name = assembler.file_name(base, 0, 1)
        if settings.sink.compression == "gzip" and not base_name.endswith(".gz"):
            raise ConfigError("worker.fileNameTemplate: sink.compression is gzip, so file names must end in .gz")
        for what, (key, part) in variants.items():
            if assembler.file_name(key, part, 1) == base_name:
                raise ConfigError(
                    f"worker.fileNameTemplate: files that differ only in {what} get the same name; "
                    f"include {{{{ {_variable_for(what)} }}}} in the template"
                )
    except AssemblyError as exc:
        raise ConfigError(f"worker.{exc}") from None


def _variable_for(what: str) -> str:
    if what.startswith("group field "):
        return f"group.{what.removeprefix('group field ')}"
    return {"window": "window_start", "part": "part", "partition": "partition", "topic": "topic"}[what]


def run_preflight(settings: AppSettings, require_samples: bool = True) -> list[str]:
    """Raise ``ConfigError`` naming the bad key; return what was checked.

    Without a sample record (JSON input or a schema registry, and no ``input.sampleFile``) the
    templates or pack cannot be rendered before data arrives: an error naming what could not be
    checked, unless ``require_samples`` is false (``--skip-render``; the worker at start), which
    reports it among the checks."""
    checked = ["configuration schema"]
    try:
        assembler = build_assembler(settings)
    except AssemblyError as exc:
        raise ConfigError(f"worker.{exc}") from None
    except PackError as exc:
        raise ConfigError(f"worker.schema: {exc}") from None
    checked.append("templates compile" if settings.worker.mode == "template" else "schema pack is valid")
    samples = _sample_records(settings)
    if samples is None:
        what = ("the pack's mappings and validation" if isinstance(assembler, StructuredAssembler)
                else "headerTemplate, recordTemplate and footerTemplate")
        why = "JSON input" if settings.input.format == "json" else "the schema registry"
        message = (f"input.sampleFile: {what} cannot be rendered before data arrives: with {why} there is no "
                   "local schema to make a sample record from; name a file of sample records (a JSON object "
                   "per line) in input.sampleFile, or run preflight with --skip-render")
        if require_samples:
            raise ConfigError(message)
        checked.append(f"NOT CHECKED: {what} against a record (no input.sampleFile)")
    _check_scope(settings)
    checked.append(f"templates fit fileScope: {settings.worker.fileScope}")
    _check_file_names(settings)
    checked.append("file names are unique per file key and safe")
    if isinstance(assembler, StructuredAssembler):
        # group values as a record gives them (header fields such as a currency attribute read them)
        key = _sample_key(settings, settings.kafka.inputTopics[0], 0, _SAMPLE_START_MS,
                          _sample_group(settings, samples[0] if samples else {}))
        try:
            assembler.open_part(key, 0, MemorySpool()).frame()
            checked.append("the pack's header and trailer render for a file window")
        except AssemblyError as exc:
            if exc.error_class != "VALIDATION_FAILED" or settings.input.sampleFile is not None:
                raise ConfigError(f"worker.schema: {assembler.pack.path}: {exc}") from None
            # placeholder values made from a schema break typed rules; real samples do not
            checked.append(f"NOT CHECKED: the header and trailer rules against real values ({exc} with placeholder "
                           "values from the schema; name input.sampleFile to check them)")
        if samples is not None:
            _check_pack_inputs(settings, assembler.pack, samples)
            checked.append("every field the pack maps from exists in the input schema")
            # real records (not the ones made from a schema, whose values break typed rules)
            for sample in samples if settings.input.sampleFile is not None else []:
                try:
                    assembler.project(sample)
                except Exception as exc:  # InvalidRecord, EvaluationError: the sample breaks a rule
                    raise ConfigError(f"input.sampleFile: a sample record fails the pack: {exc}") from None
    elif samples is not None:
        for value in samples:
            records = [SourceRecord(settings.kafka.inputTopics[0], 0, i, 0, value) for i in range(2)]
            key = _sample_key(settings, settings.kafka.inputTopics[0], 0, _SAMPLE_START_MS, _sample_group(settings, value))
            try:
                if settings.worker.streamingAppendEnabled:
                    # as streamed: header and footer see totals but not the list of records
                    part = assembler.open_part(key, 0, MemorySpool())
                    for record in records:
                        part.append(record)
                    part.finish()
                else:
                    assembler.assemble(FileCut.of(key, 0, records))
            except AssemblyError as exc:
                raise ConfigError(f"worker.{exc}") from None
        checked.append("templates render a sample record of every input schema")
    try:
        build_sink(settings).check_writable()
    except SinkError as exc:
        raise ConfigError(f"sink.{'bucket' if settings.sink.type == 's3' else 'localTargetDir'}: {exc}") from None
    checked.append("sink is writable")
    if settings.delivery.sftp:
        from stream_app.delivery.sftp import check_credentials

        for index, destination in enumerate(settings.delivery.sftp):
            problem = check_credentials(destination)
            if problem is not None:
                raise ConfigError(f"delivery.sftp.{index}.{problem[0]}: {problem[1]}")
        checked.append("SFTP keys and pinned host keys load")
    return checked
