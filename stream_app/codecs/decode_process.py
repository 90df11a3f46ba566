"""Avro decoding in a helper process: the worker's hot path on a second core.

A worker is one Python process, and its threads share one GIL; fastavro's reading of the record
body is most of its CPU time.  ``ProcessAvroDecoder`` sends the payloads of a batch, in chunks,
to a helper process that reads them (``read_confluent``: header, schema, body, trailing bytes)
and answers with the plain values, which ``marshal`` carries back at a quarter of the cost of
reading them.  The worker converts the top-level logical fields itself (``convert_plain``), so
the records are exactly those of the in-process ``AvroDecoder``: the same code reads them.

Chunks are pipelined: while the worker windows the records of chunk n, the helper reads chunk
n+1; and ``prefetch`` sends the whole next fetched batch while the worker still windows,
finalizes and commits the one before (prefetched batches queue up in order).  Frames are
written by a sender thread, so a full pipe (the helper busy) never stalls the worker's main
thread, and read by a receiver thread, so the helper never waits for the main thread to read
(it would stop a pipe's worth ahead of it).  If the helper dies, the rest of the batch (and
later batches, after a restart of the helper) is decoded in the worker: decoding is pure, so
nothing is lost or changed.

The process and its frames are ``ops/helper_process.py``'s.  A request body is ``marshal`` of a
list of payloads (bytes or None); a response body is b"M" + ``marshal`` (or b"P" + ``pickle``
when a value holds objects marshal cannot carry, e.g. nested logical types) of one item per
payload:
``(0, schema_id, plain value)``, or with ``carry`` when the value has a packed form
``(0, schema_id, packed form, plain value of the fields the routing stage reads)``,
``(1, reason, detail)`` for a decode error, or
``(2, message)`` when the schema registry could not be asked.
"""

from __future__ import annotations

import logging
import marshal
import pickle
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from stream_app.codecs import DecodeError
from stream_app.codecs.avro import AvroDecoder, SchemaResolver, convert_plain, read_confluent
from stream_app.codecs.carried import CarryingAvroDecoder, pack, unpack
from stream_app.codecs.registry import RegistryUnavailable
from stream_app.core.records import RawRecord, SourceRecord
from stream_app.ops.helper_process import HelperClient, HelperGone, serve

log = logging.getLogger(__name__)

CHUNK = 500  # records per request: small enough to pipeline a batch, large enough to amortize
FIRST_CHUNK = 100
AHEAD = 2  # chunks sent before their turn: the helper always has the next one at hand
_OK, _ERROR, _REGISTRY = 0, 1, 2


class ProcessAvroDecoder(HelperClient):
    """``AvroDecoder`` whose bulk path reads record bodies in a helper process."""

    helper_module = __name__
    helper_name = "decode helper"
    fallback_work = "decoding"

    def __init__(self, local_schemas: dict[int, str], registry: dict[str, Any] | None, event_time_field: str,
                 max_record_bytes: int, restart_after_s: float = 60.0, carry: bool = False,
                 reads: Sequence[str] | None = None, clock: Callable[[], float] = time.monotonic,
                 time_as_millis: bool = False) -> None:
        # carry: the routing stage's decoder.  Records come with their carried form, which the
        # helper packs (codecs/carried.py); their value then holds only the fields in ``reads``
        # (event time, groupBy: all the routing stage looks at; None: every field), so the worker
        # neither unpacks nor converts the rest.  time_as_millis: the event time is read only as
        # the record's epoch ms, so with ``reads`` its field is left out of the value (a timestamp-
        # millis field: not built as a datetime that nobody reads).
        super().__init__({"local": {str(k): v for k, v in local_schemas.items()}, "registry": registry,
                          "max": max_record_bytes, "carry": carry, "reads": None if reads is None else list(reads)},
                         restart_after_s, clock)
        self._resolver = SchemaResolver(local_schemas, registry)
        self._local: AvroDecoder = (CarryingAvroDecoder if carry else AvroDecoder)(
            self._resolver, event_time_field, max_record_bytes)
        self._time_field = event_time_field
        self._time_as_millis = time_as_millis

    def decode(self, raw: RawRecord) -> SourceRecord:
        return self._local.decode(raw)

    def _send(self, chunk: Sequence[RawRecord]) -> None:
        self._send_body(marshal.dumps([raw.value for raw in chunk]))

    def _receive(self) -> list:
        body = self._receive_body()
        return marshal.loads(body[1:]) if body[:1] == b"M" else pickle.loads(body[1:])

    # -- bulk decoding ------------------------------------------------------------------------
    @staticmethod
    def _chunks(raws: Sequence[RawRecord]) -> list[Sequence[RawRecord]]:
        # A small first chunk: the worker waits for it with nothing to do.
        bounds = [0, min(FIRST_CHUNK, len(raws)), *range(FIRST_CHUNK + CHUNK, len(raws), CHUNK), len(raws)]
        return [raws[a:b] for a, b in zip(bounds, bounds[1:]) if b > a]

    def prefetch(self, raws: Sequence[RawRecord]) -> None:
        """Send a batch ``decode_many`` gets later: the helper reads it while the worker still
        windows, finalizes and commits the batches before it.  Batches are decoded in the order
        they were prefetched; one that is never decoded (dropped by a rebalance) is skipped."""
        if not raws:
            return
        try:
            proc = self._helper()
            if proc is None:
                return
            chunks = self._chunks(raws)
            for chunk in chunks:  # all of it: the helper's answers wait in its pipe
                self._send(chunk)
            self._prefetched.append((raws, len(chunks)))
        except HelperGone as exc:
            self._failed(exc)

    def decode_many(self, raws: Sequence[RawRecord]) -> Iterator[SourceRecord | DecodeError]:
        done = 0  # records whose results were handed out
        try:
            proc = self._helper()
            if proc is None:
                raise HelperGone("waiting before the next start")
            sent = self._prefetched_requests(raws)
            chunks = self._chunks(raws)
            for index, chunk in enumerate(chunks):
                # The helper always holds the next AHEAD chunks: it reads them while this one is windowed.
                while sent < min(index + 1 + AHEAD, len(chunks)):
                    self._send(chunks[sent])
                    sent += 1
                items = self._receive()
                if len(items) != len(chunk):
                    raise HelperGone(f"the decode helper answered {len(items)} results for {len(chunk)} records")
                for raw, item in zip(chunk, items):
                    result = self._result(raw, item)
                    done += 1
                    yield result
        except HelperGone as exc:
            self._failed(exc)
            for raw in raws[done:]:
                try:
                    yield self._local.decode(raw)
                except DecodeError as error:
                    yield error

    def _result(self, raw: RawRecord, item: Any) -> SourceRecord | DecodeError:
        if item[0] == _OK:
            schema_id, value = item[1], item[2]
            reader = self._resolver.get(schema_id)
            if reader is None:  # known to the helper a moment ago: the registry forgot it
                return DecodeError("UNKNOWN_SCHEMA_ID", f"schema id {schema_id} is not known")
            carried = None
            if len(item) == 4:  # carry: the packed form and the fields read, or None for all
                carried, value = value, item[3] if item[3] is not None else unpack(reader, value)
            try:
                millis = convert_plain(schema_id, reader, value, self._time_field, self._time_as_millis)
                return self._local.source_record(raw, value, millis, carried)
            except DecodeError as exc:
                return exc
        if item[0] == _ERROR:
            return DecodeError(item[1], item[2])
        raise RegistryUnavailable(item[1])


# -- the helper process -------------------------------------------------------------------------
def _decode_payload(payload: bytes | None, resolver: SchemaResolver, max_bytes: int, carry: bool,
                    reads: list[str] | None) -> tuple:
    try:
        if payload is None:
            raise DecodeError("NULL_VALUE", "record value is null (tombstone)")
        if len(payload) > max_bytes:
            raise DecodeError("OVERSIZED_RECORD", f"record value has {len(payload)} bytes, limit is {max_bytes}")
        schema_id, reader, value = read_confluent(payload, resolver)
        if carry:
            packed = pack(schema_id, reader, value)
            if packed is not None:
                return (_OK, schema_id, packed, None if reads is None else {n: value[n] for n in reads if n in value})
        return (_OK, schema_id, value)
    except DecodeError as exc:
        return (_ERROR, exc.reason, exc.detail)
    except RegistryUnavailable as exc:
        return (_REGISTRY, str(exc))


def _answerer(settings: dict[str, Any]) -> Callable[[bytes], bytes]:
    resolver = SchemaResolver({int(k): v for k, v in settings["local"].items()}, settings["registry"])
    max_bytes, carry, reads = settings["max"], settings["carry"], settings["reads"]

    def answer(body: bytes) -> bytes:
        items = [_decode_payload(p, resolver, max_bytes, carry, reads) for p in marshal.loads(body)]
        try:
            return b"M" + marshal.dumps(items)
        except ValueError:  # objects marshal cannot carry (nested logical types)
            return b"P" + pickle.dumps(items, protocol=pickle.HIGHEST_PROTOCOL)

    return answer


if __name__ == "__main__":
    serve(_answerer)
