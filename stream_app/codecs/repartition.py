"""The repartition topic's record format (version 2), between the routing and the file stage.

One Kafka record carries either a run of routed records of one source partition for one file
key, or one source partition's close frontier.  Carrying runs instead of one Kafka record per
source record keeps the routing stage's produce cost per record small (it is on the hot path).
Each value is in its carried form (codecs/carried.py): an Avro record as its packed top-level
fields, which the file stage unpacks for a quarter of the cost of reading Avro again; anything
else as the bytes read from the input topic.

Layout (big-endian)::

    u8 version (2) | u8 kind
    kind 0, records:  str source topic | i32 source partition | i64 window start | i64 window end
                      | u8 group fields, each str name, str value | u32 count
                      | count x (i64 offset | i64 event time ms | i32 length, -1 for null | carried value)
    kind 1, frontier: str source topic | i32 source partition | i64 next source offset
                      | i64 frontier (every window ending at or before it is closed; -1: none)
    str = u16 length | UTF-8 bytes

The Kafka key is the file key's id (records) or empty (frontiers: sent to every partition).
Version 1 (workers of 0.1.0) had the same layout with the values as read; it is still read,
so records routed by an older worker in flight during an upgrade are not lost.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

from stream_app.codecs.carried import as_read
from stream_app.core.windows import TP, FileKey

VERSION = 2
_AS_READ_VERSION = 1  # values as read from the input (see the module docstring)
_RECORDS, _FRONTIER = 0, 1
_HEAD = struct.Struct(">BB")
_I32 = struct.Struct(">i")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_I64X2 = struct.Struct(">qq")
_ENTRY = struct.Struct(">qqi")

# A routed run is split before it grows past this (Kafka's default record limit is 1 MiB); a
# record larger than this alone is a run of its own.
MAX_RUN_BYTES = 512 * 1024
# What a repartition Kafka record may hold beside the routed value (file key, source, entry)
# before the exact size is worked out (routed_record_bytes); group values longer than this in
# total are measured exactly.
ENVELOPE_ROOM = 64 * 1024
# A record batch's own header and a record's framing, around the value and key.
BATCH_OVERHEAD = 1024


def repartition_message_bytes(max_record_bytes: int) -> int:
    """The repartition topic's ``max.message.bytes`` (and the producer's limit): any accepted
    record (``input.maxRecordBytes``) fits, also in a carried form up to twice as large."""
    return 2 * max_record_bytes + ENVELOPE_ROOM + BATCH_OVERHEAD


def routed_record_bytes(key: FileKey, source: TP, value_bytes: int) -> int:
    """Key and value bytes of the repartition record that carries one routed value alone."""
    size = _HEAD.size + 2 + len(source[0].encode("utf-8")) + _I32.size + _I64X2.size + 1 + _U32.size + _ENTRY.size
    for name, value in key.group:
        size += 4 + len(name.encode("utf-8")) + len(value.encode("utf-8"))
    return size + value_bytes + len(key.id.encode("utf-8"))


class RepartitionFormatError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class RoutedRun:
    key: FileKey
    source: TP
    # (source offset, event time ms, carried value), in source offset order
    records: list[tuple[int, int, bytes | None]]


@dataclass(frozen=True, slots=True)
class FrontierMarker:
    source: TP
    next_offset: int
    frontier: int


def _str(value: str) -> bytes:
    data = value.encode("utf-8")
    return _U16.pack(len(data)) + data


def encode_runs(key: FileKey, source: TP, records: list[tuple[int, int, bytes | None]]) -> Iterator[bytes]:
    """One or more payloads for a run (split at ``MAX_RUN_BYTES``)."""
    head = bytearray(_HEAD.pack(VERSION, _RECORDS))
    head += _str(source[0]) + _I32.pack(source[1]) + _I64X2.pack(key.window_start_ms, key.window_end_ms)
    head.append(len(key.group))
    for name, value in key.group:
        head += _str(name) + _str(value)
    start = 0
    while start < len(records):
        size, end = len(head), start
        while end < len(records):
            payload = records[end][2]
            entry = _ENTRY.size + (len(payload) if payload is not None else 0)
            if end > start and size + entry > MAX_RUN_BYTES:
                break  # never past MAX_RUN_BYTES, unless one record alone is larger
            size += entry
            end += 1
        body = [bytes(head), _U32.pack(end - start)]
        for offset, event_time, payload in records[start:end]:
            if payload is None:
                body.append(_ENTRY.pack(offset, event_time, -1))
            else:
                body.append(_ENTRY.pack(offset, event_time, len(payload)))
                body.append(payload)
        yield b"".join(body)
        start = end


def encode_frontier(source: TP, next_offset: int, frontier: int) -> bytes:
    return _HEAD.pack(VERSION, _FRONTIER) + _str(source[0]) + _I32.pack(source[1]) + _I64X2.pack(next_offset, frontier)


def decode(payload: bytes) -> RoutedRun | FrontierMarker:
    try:
        version, kind = _HEAD.unpack_from(payload, 0)
        if version != VERSION and version != _AS_READ_VERSION:
            raise RepartitionFormatError(
                f"repartition record version {version}, this worker reads {_AS_READ_VERSION} and {VERSION}")
        pos = _HEAD.size
        topic, pos = _read_str(payload, pos)
        (partition,) = _I32.unpack_from(payload, pos)
        pos += 4
        if kind == _FRONTIER:
            next_offset, frontier = _I64X2.unpack_from(payload, pos)
            return FrontierMarker((topic, partition), next_offset, frontier)
        if kind != _RECORDS:
            raise RepartitionFormatError(f"unknown repartition record kind {kind}")
        start, end = _I64X2.unpack_from(payload, pos)
        pos += 16
        fields = payload[pos]
        pos += 1
        group = []
        for _ in range(fields):
            name, pos = _read_str(payload, pos)
            value, pos = _read_str(payload, pos)
            group.append((name, value))
        (count,) = _U32.unpack_from(payload, pos)
        pos += 4
        records: list[tuple[int, int, bytes | None]] = []
        for _ in range(count):
            offset, event_time, length = _ENTRY.unpack_from(payload, pos)
            pos += _ENTRY.size
            if length < 0:
                records.append((offset, event_time, None))
            else:
                records.append((offset, event_time, bytes(payload[pos:pos + length])))
                pos += length
        if pos != len(payload):
            raise RepartitionFormatError("trailing bytes after the last record")
        if version == _AS_READ_VERSION:
            records = [(offset, at, None if value is None else as_read(value)) for offset, at, value in records]
        return RoutedRun(FileKey(None, None, start, end, tuple(group)), (topic, partition), records)
    except (struct.error, IndexError, UnicodeDecodeError) as exc:
        raise RepartitionFormatError(f"malformed repartition record: {exc}") from None


def _read_str(payload: bytes, pos: int) -> tuple[str, int]:
    (length,) = _U16.unpack_from(payload, pos)
    pos += 2
    if pos + length > len(payload):
        raise RepartitionFormatError("truncated string")
    return bytes(payload[pos:pos + length]).decode("utf-8"), pos + length
