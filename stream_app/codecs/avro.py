"""Avro in the Confluent wire format: magic byte 0, 4-byte big-endian schema id, Avro binary.

Schemas come from a Confluent-compatible schema registry when one is configured, else from the
``avroSchemas`` map of schema id -> ``.avsc`` file.
"""

from __future__ import annotations

import io
import json
import struct
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import fastavro

from stream_app.codecs import DecodeError, check_size, event_time_ms
from stream_app.core.records import RawRecord, SourceRecord

MAGIC_BYTE = 0
_HEADER = struct.Struct(">bI")


class RegistryUnavailable(Exception):
    """The schema registry could not be asked; transient, the batch is retried."""


def load_schema(path: str | Path) -> dict:
    return fastavro.parse_schema(json.loads(Path(path).read_text(encoding="utf-8")))


class SchemaResolver:
    """Schema id -> parsed schema, from local files or a registry (cached either way)."""

    def __init__(self, local: dict[int, str] | None = None, registry_url: str | None = None, timeout_s: float = 5.0):
        self._cache: dict[int, Any] = {}
        self._registry_url = registry_url.rstrip("/") if registry_url else None
        self._timeout = timeout_s
        if not self._registry_url:
            for schema_id, path in (local or {}).items():
                self._cache[int(schema_id)] = load_schema(path)

    def get(self, schema_id: int) -> Any | None:
        if schema_id in self._cache:
            return self._cache[schema_id]
        if not self._registry_url:
            return None
        try:
            with urllib.request.urlopen(f"{self._registry_url}/schemas/ids/{schema_id}", timeout=self._timeout) as resp:
                body = json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise RegistryUnavailable(f"schema registry answered HTTP {exc.code}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise RegistryUnavailable(f"schema registry unreachable: {exc}") from None
        parsed = fastavro.parse_schema(json.loads(body["schema"]))
        self._cache[schema_id] = parsed
        return parsed


def encode_confluent(schema_id: int, parsed_schema: Any, record: dict) -> bytes:
    buf = io.BytesIO()
    buf.write(_HEADER.pack(MAGIC_BYTE, schema_id))
    fastavro.schemaless_writer(buf, parsed_schema, record)
    return buf.getvalue()


def decode_confluent(payload: bytes, resolver: SchemaResolver) -> dict:
    if len(payload) < _HEADER.size:
        raise DecodeError("TRUNCATED_AVRO", f"payload of {len(payload)} bytes is shorter than the wire-format header")
    magic, schema_id = _HEADER.unpack_from(payload)
    if magic != MAGIC_BYTE:
        raise DecodeError("BAD_MAGIC_BYTE", f"magic byte is {magic}, expected {MAGIC_BYTE}")
    schema = resolver.get(schema_id)
    if schema is None:
        raise DecodeError("UNKNOWN_SCHEMA_ID", f"schema id {schema_id} is not known")
    buf = io.BytesIO(payload)
    buf.seek(_HEADER.size)
    try:
        value = fastavro.schemaless_reader(buf, schema, None)
    except Exception as exc:  # fastavro raises EOFError, ValueError, IndexError, ... on bad bytes
        raise DecodeError("AVRO_DECODE_ERROR", f"bytes do not match schema {schema_id} ({type(exc).__name__})") from None
    if buf.tell() != len(payload):
        raise DecodeError("AVRO_DECODE_ERROR", f"{len(payload) - buf.tell()} trailing bytes after the record")
    if not isinstance(value, dict):
        raise DecodeError("NOT_A_RECORD", f"schema {schema_id} is not a record schema")
    return value


class AvroDecoder:
    def __init__(self, resolver: SchemaResolver, event_time_field: str, max_record_bytes: int) -> None:
        self._resolver = resolver
        self._event_time_field = event_time_field
        self._max = max_record_bytes

    def decode(self, raw: RawRecord) -> SourceRecord:
        value = decode_confluent(check_size(raw, self._max), self._resolver)
        return SourceRecord(raw.topic, raw.partition, raw.offset, event_time_ms(value, self._event_time_field), value)
