"""The journal's and the dead-letter topic's Avro schemas, and reading their records back.

A record carries the Confluent wire-format header: magic byte 0, then the 4-byte id of the
schema it was written with.  The reader checks the magic byte, resolves that id to the writer
schema, and decodes with Avro schema resolution into the current (reader) schema, so events
of every version read the same way (a field added later takes its default).

Ids come from the schema registry (``registerEventSchemas``; the registry gives each schema
version its own id) or, without a registry, from the fixed table below, one id per schema
version, never reused.  Versions before 0.4.0 wrote 1001 and 1002 for every version of their
schema; those two ids are read by trying the versions they stood for, newest first.
"""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Callable
from typing import Any

import fastavro

from stream_app.resources import AVRO_DIR


def _load(file: str) -> dict:
    # not codecs.avro.load_schema: that module imports the registry client, which imports this
    parsed = fastavro.parse_schema(json.loads((AVRO_DIR / file).read_text(encoding="utf-8")))
    assert isinstance(parsed, dict)
    return parsed


JOURNAL_SCHEMA = _load("journal_event.avsc")
# 0.3.0-0.4.x: the same fields without the trailing delivery fields.
JOURNAL_SCHEMA_V2 = {**JOURNAL_SCHEMA, "fields": JOURNAL_SCHEMA["fields"][:-3]}
# 0.1.0-0.2.x: the same fields without the trailing ``terminal``.
JOURNAL_SCHEMA_V1 = {**JOURNAL_SCHEMA, "fields": JOURNAL_SCHEMA["fields"][:-4]}
DEAD_LETTER_SCHEMA = _load("dead_letter.avsc")
# 0.1.x: the same fields without the trailing ``event_id``.
DEAD_LETTER_SCHEMA_V1 = {**DEAD_LETTER_SCHEMA, "fields": DEAD_LETTER_SCHEMA["fields"][:-1]}

# The ids this version writes without a registry.
JOURNAL_SCHEMA_ID = 1013
DEAD_LETTER_SCHEMA_ID = 1022

# id -> writer schema, one id per version of each schema (add a row for every new version).
LOCAL_WRITER_SCHEMAS: dict[int, Any] = {
    1011: JOURNAL_SCHEMA_V1,
    1012: JOURNAL_SCHEMA_V2,
    JOURNAL_SCHEMA_ID: JOURNAL_SCHEMA,
    1021: DEAD_LETTER_SCHEMA_V1,
    DEAD_LETTER_SCHEMA_ID: DEAD_LETTER_SCHEMA,
}
# Ids that stood for every version before 0.4.0: the candidates, newest first.
LEGACY_SHARED_IDS: dict[int, tuple[Any, ...]] = {
    1001: (JOURNAL_SCHEMA_V2, JOURNAL_SCHEMA_V1),
    1002: (DEAD_LETTER_SCHEMA, DEAD_LETTER_SCHEMA_V1),
}

_HEADER = struct.Struct(">bI")


class EventDecodeError(Exception):
    """A journal or dead-letter record this reader cannot read: not the wire format, or a
    schema id it cannot resolve."""


class EventReader:
    """Decodes one topic's records (journal events or dead letters) into ``reader_schema``.

    ``registry_schema``: schema id -> schema text from the registry (None when it does not know
    the id); without it only the local ids resolve.
    """

    def __init__(self, what: str, reader_schema: Any,
                 registry_schema: Callable[[int], str | None] | None = None) -> None:
        self.what = what
        self.reader_schema = reader_schema
        self._registry_schema = registry_schema
        own = (JOURNAL_SCHEMA, JOURNAL_SCHEMA_V2, JOURNAL_SCHEMA_V1) if reader_schema is JOURNAL_SCHEMA else \
            (DEAD_LETTER_SCHEMA, DEAD_LETTER_SCHEMA_V1)
        # a local id of the other topic's schema is not this topic's: resolving it would fail
        # with a confusing schema-mismatch error instead of naming the id
        self._writers: dict[int, tuple[Any, ...]] = {
            sid: (schema,) for sid, schema in LOCAL_WRITER_SCHEMAS.items() if any(schema is s for s in own)}
        self._writers.update({sid: c for sid, c in LEGACY_SHARED_IDS.items() if any(c[0] is s for s in own)})

    def decode(self, payload: bytes | None) -> dict:
        if payload is None or len(payload) < _HEADER.size:
            raise EventDecodeError(f"{self.what}: not in the Confluent wire format "
                                   f"({0 if payload is None else len(payload)} bytes)")
        magic, schema_id = _HEADER.unpack_from(payload)
        if magic != 0:
            raise EventDecodeError(f"{self.what}: magic byte is {magic}, expected 0 (not the Confluent wire format)")
        candidates = self._writer_schemas(schema_id)
        for number, writer in enumerate(candidates, 1):
            buf = io.BytesIO(payload)
            buf.seek(_HEADER.size)
            try:
                value = fastavro.schemaless_reader(buf, writer, self.reader_schema)
            except (EOFError, ValueError, IndexError, fastavro.read.SchemaResolutionError) as exc:
                if number < len(candidates):
                    continue  # a legacy shared id: the next version it stood for
                raise EventDecodeError(f"{self.what}: bytes do not match schema id {schema_id} "
                                       f"({type(exc).__name__})") from None
            if isinstance(value, dict) and buf.tell() == len(payload):
                return value
            if number == len(candidates):
                break
        raise EventDecodeError(f"{self.what}: bytes do not match schema id {schema_id}")

    def _writer_schemas(self, schema_id: int) -> tuple[Any, ...]:
        if schema_id in self._writers:
            return self._writers[schema_id]
        text = self._registry_schema(schema_id) if self._registry_schema is not None else None
        if text is None:
            where = "nor in the schema registry" if self._registry_schema is not None else "and no schema registry is configured"
            raise EventDecodeError(f"{self.what}: unknown schema id {schema_id} (not one of the local ids "
                                   f"{sorted(self._writers)}, {where})")
        writer = fastavro.parse_schema(json.loads(text))
        self._writers[schema_id] = (writer,)
        return (writer,)


def journal_reader(registry_schema: Callable[[int], str | None] | None = None) -> EventReader:
    return EventReader("journal event", JOURNAL_SCHEMA, registry_schema)


def dead_letter_reader(registry_schema: Callable[[int], str | None] | None = None) -> EventReader:
    return EventReader("dead letter", DEAD_LETTER_SCHEMA, registry_schema)
