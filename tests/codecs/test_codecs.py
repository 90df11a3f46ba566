"""Decoders turn every kind of bad input into a reason code, never an unhandled exception."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from stream_app.codecs import DecodeError
from stream_app.codecs.avro import AvroDecoder, SchemaResolver, encode_confluent, load_schema
from stream_app.codecs.decode_process import ProcessAvroDecoder
from stream_app.codecs.json import JsonDecoder
from stream_app.core.records import RawRecord
from stream_app.resources import AVRO_DIR
from stream_app.tools.demo import matched_records

SCHEMA_PATH = str(AVRO_DIR / "matched_record.avsc")


def raw(value: bytes | None) -> RawRecord:
    return RawRecord("t", 1, 7, None, None, value)


@pytest.fixture(scope="module")
def avro():
    return AvroDecoder(SchemaResolver({1: SCHEMA_PATH}), "matched_at", 1_000_000)


@pytest.fixture(scope="module")
def sample():
    return next(matched_records(1, seed=3))


def test_avro_round_trip_keeps_decimals_and_event_time(avro, sample):
    payload = encode_confluent(1, load_schema(SCHEMA_PATH), sample)
    record = avro.decode(raw(payload))
    assert record.value["amount"] == sample["amount"] and isinstance(record.value["amount"], Decimal)
    assert record.event_time_ms == int(sample["matched_at"].timestamp() * 1000)
    assert (record.topic, record.partition, record.offset) == ("t", 1, 7)


@pytest.mark.parametrize("mutate, reason", [
    (lambda p: b"\x01" + p[1:], "BAD_MAGIC_BYTE"),
    (lambda p: p[:3], "TRUNCATED_AVRO"),
    (lambda p: p[:40], "AVRO_DECODE_ERROR"),
    (lambda p: p + b"\x00\x01", "AVRO_DECODE_ERROR"),
    (lambda p: p[:1] + b"\x00\x00\x00\x63" + p[5:], "UNKNOWN_SCHEMA_ID"),
])
def test_avro_poison(avro, sample, mutate, reason):
    payload = encode_confluent(1, load_schema(SCHEMA_PATH), sample)
    with pytest.raises(DecodeError) as err:
        avro.decode(raw(mutate(payload)))
    assert err.value.reason == reason


def test_oversized_and_null(sample):
    decoder = AvroDecoder(SchemaResolver({1: SCHEMA_PATH}), "matched_at", 10)
    with pytest.raises(DecodeError, match="OVERSIZED_RECORD"):
        decoder.decode(raw(b"\x00" * 11))
    with pytest.raises(DecodeError, match="NULL_VALUE"):
        decoder.decode(raw(None))


def test_missing_event_time_in_avro_schema(sample):
    decoder = AvroDecoder(SchemaResolver({1: SCHEMA_PATH}), "settled_at", 1_000_000)
    with pytest.raises(DecodeError) as err:
        decoder.decode(raw(encode_confluent(1, load_schema(SCHEMA_PATH), sample)))
    assert err.value.reason == "MISSING_EVENT_TIME"


@pytest.fixture
def js():
    return JsonDecoder("matched_at", ["amount"], 10_000)


def test_json_decimals_and_iso_time(js):
    record = js.decode(raw(json.dumps({"matched_at": "2026-03-02T01:00:00Z", "amount": "0.10"}).encode()))
    assert record.value["amount"] == Decimal("0.10")
    assert record.event_time_ms == 1_772_413_200_000
    number = js.decode(raw(b'{"matched_at": 5, "amount": 0.1}'))
    assert number.value["amount"] == Decimal("0.1")


@pytest.mark.parametrize("payload, reason", [
    (b"{not json", "JSON_DECODE_ERROR"),
    (b"[1, 2]", "NOT_AN_OBJECT"),
    (b'"text"', "NOT_AN_OBJECT"),
    (b'{"amount": "1"}', "MISSING_EVENT_TIME"),
    (b'{"matched_at": null}', "MISSING_EVENT_TIME"),
    (b'{"matched_at": "yesterday"}', "BAD_EVENT_TIME"),
    (b'{"matched_at": "2026-03-02T01:00:00"}', "BAD_EVENT_TIME"),
    (b'{"matched_at": 1, "amount": "12,50"}', "BAD_DECIMAL"),
    (b'{"matched_at": 1, "amount": "NaN"}', "BAD_DECIMAL"),
    (b'{"matched_at": 1, "amount": "-Infinity"}', "BAD_DECIMAL"),
    (b'{"matched_at": 1, "amount": "sNaN"}', "BAD_DECIMAL"),
])
def test_json_poison(js, payload, reason):
    with pytest.raises(DecodeError) as err:
        js.decode(raw(payload))
    assert err.value.reason == reason
    assert "12,50" not in err.value.detail


class _Registry:
    """A Confluent-compatible schema registry endpoint on localhost (GET /schemas/ids/{id})."""

    def __init__(self, schemas: dict[int, str]) -> None:
        import http.server
        import threading

        registry = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server API
                registry.requests += 1
                schema_id = int(self.path.rsplit("/", 1)[-1])
                if schema_id in schemas:
                    body = json.dumps({"schema": schemas[schema_id]}).encode()
                    self.send_response(200)
                else:
                    body = b'{"error_code": 40403, "message": "Schema not found"}'
                    self.send_response(404)
                self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.requests = 0
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def test_schema_registry_resolution(sample):
    from pathlib import Path

    from stream_app.codecs.registry import RegistryUnavailable

    registry = _Registry({42: Path(SCHEMA_PATH).read_text()})
    try:
        decoder = AvroDecoder(SchemaResolver(registry={"url": registry.url}), "matched_at", 1_000_000)
        payload = encode_confluent(42, load_schema(SCHEMA_PATH), sample)
        assert decoder.decode(raw(payload)).value["record_id"] == sample["record_id"]
        decoder.decode(raw(payload))
        assert registry.requests == 1  # cached
        with pytest.raises(DecodeError, match="UNKNOWN_SCHEMA_ID"):
            decoder.decode(raw(b"\x00\x00\x00\x00\x07" + payload[5:]))
    finally:
        registry.server.shutdown()
        registry.server.server_close()
    with pytest.raises(RegistryUnavailable):
        SchemaResolver(registry={"url": registry.url, "timeout": 1}).get(1)


# -- the helper process -------------------------------------------------------------------------

def _mixed_batch(count: int) -> list[RawRecord]:
    """Valid records with poison of every kind at scattered places, across several chunks."""
    schema = load_schema(SCHEMA_PATH)
    poison = [None, b"\x01" + b"\x00" * 20, b"\x00\x00", b"\x00\x00\x00\x00\x63abc", b"\x00\x00\x00\x00\x01" + b"\xff" * 9,
              b"\x00" * 3000, b"trailing"]
    raws = []
    for i, value in enumerate(matched_records(count, seed=5)):
        payload = encode_confluent(1, schema, value)
        if i % 97 == 13:
            kind = poison[(i // 97) % len(poison)]
            payload = payload + b"\x00\x01" if kind == b"trailing" else kind
        raws.append(RawRecord("t", i % 3, i, None, None, payload))
    return raws


def _outcomes(results) -> list:
    # A record as its coordinates, event time and typed field texts; an error as its reason.
    return [(r.reason,) if isinstance(r, DecodeError) else
            (r.topic, r.partition, r.offset, r.event_time_ms, {k: (type(v), str(v)) for k, v in r.value.items()})
            for r in results]


@pytest.fixture
def helper_decoder():
    decoder = ProcessAvroDecoder({1: SCHEMA_PATH}, None, "matched_at", 2000)
    yield decoder
    decoder.close()


def test_the_helper_process_decodes_exactly_as_the_worker_does(helper_decoder):
    raws = _mixed_batch(1_700)  # 4 chunks, errors in each
    expected = _outcomes(AvroDecoder(SchemaResolver({1: SCHEMA_PATH}), "matched_at", 2000).decode_many(raws))
    assert {o[0] for o in expected if len(o) == 1} == {"NULL_VALUE", "BAD_MAGIC_BYTE", "TRUNCATED_AVRO",
                                                      "UNKNOWN_SCHEMA_ID", "AVRO_DECODE_ERROR", "OVERSIZED_RECORD"}
    assert _outcomes(helper_decoder.decode_many(raws)) == expected
    assert helper_decoder._proc is not None and helper_decoder._proc.poll() is None  # it was the helper
    # A batch left half read (the pipeline stopped at an error): the next batch is still right.
    helper = helper_decoder._proc
    partial = helper_decoder.decode_many(raws)
    [next(partial) for _ in range(150)]
    partial.close()
    assert _outcomes(helper_decoder.decode_many(raws[:900])) == expected[:900]
    assert helper_decoder._proc is helper  # its unread answers were skipped, not taken for the new batch


def test_a_prefetched_batch_is_decoded_once_and_an_unused_prefetch_is_skipped(helper_decoder):
    raws = _mixed_batch(1_700)
    expected = _outcomes(AvroDecoder(SchemaResolver({1: SCHEMA_PATH}), "matched_at", 2000).decode_many(raws))
    helper_decoder.prefetch(raws)
    assert helper_decoder._in_flight == 5  # the whole batch is with the helper before decode_many
    assert _outcomes(helper_decoder.decode_many(raws)) == expected
    assert helper_decoder._in_flight == 0
    # A prefetched batch that is then not decoded (dropped by a rebalance): another batch follows.
    helper = helper_decoder._proc
    helper_decoder.prefetch(raws[:600])
    assert _outcomes(helper_decoder.decode_many(raws[600:])) == expected[600:]
    # A prefetch for a batch that never comes, then another decoded: the first one's answers skipped.
    helper_decoder.prefetch(raws[:5])
    helper_decoder.prefetch(raws)
    assert _outcomes(helper_decoder.decode_many(raws)) == expected
    assert helper_decoder._proc is helper and helper_decoder._in_flight == 0
    # The helper dies between prefetch and decode_many: decoded in the worker, nothing lost.
    helper_decoder.prefetch(raws)
    helper.kill()
    helper.wait()
    assert _outcomes(helper_decoder.decode_many(raws)) == expected


def test_prefetched_batches_queue_up_and_each_is_decoded_right(helper_decoder):
    raws = _mixed_batch(1_700)
    expected = _outcomes(AvroDecoder(SchemaResolver({1: SCHEMA_PATH}), "matched_at", 2000).decode_many(raws))
    first, second, third = raws[:700], raws[700:1300], raws[1300:]
    want = {id(first): expected[:700], id(second): expected[700:1300], id(third): expected[1300:]}

    def decoded(batch):
        return _outcomes(helper_decoder.decode_many(batch)) == want[id(batch)]

    # The next batch goes to the helper while the one before is still to be windowed.
    helper_decoder.prefetch(first)
    helper_decoder.prefetch(second)
    assert helper_decoder._in_flight == 3 + 2
    assert decoded(first)
    helper_decoder.prefetch(third)
    assert decoded(second) and decoded(third)
    helper = helper_decoder._proc
    assert helper_decoder._in_flight == 0
    # The first batch's reader stops early (an error in the pipeline; the generator is neither
    # finished nor closed): the rest of its answers are skipped, the queued batch is right.
    helper_decoder.prefetch(first)
    helper_decoder.prefetch(second)
    partial = helper_decoder.decode_many(first)
    [next(partial) for _ in range(150)]
    assert decoded(second)
    # A batch dropped by a rebalance ahead of the next two: skipped.
    for batch in (first, second, third):
        helper_decoder.prefetch(batch)
    assert decoded(second) and decoded(third)
    # A batch read again (a retry after a registry outage) while the next is queued: both right.
    helper_decoder.prefetch(first)
    helper_decoder.prefetch(second)
    partial = helper_decoder.decode_many(first)
    [next(partial) for _ in range(100)]
    assert decoded(first) and decoded(second)
    assert helper_decoder._proc is helper and helper_decoder._in_flight == 0 and not helper_decoder._prefetched
    del partial


def test_answers_survive_a_helper_stopped_and_continued_mid_write(helper_decoder):
    # A stopped process (SIGSTOP, a cgroup freeze, a profiler's ptrace) has its blocked pipe write
    # cut short; through a BufferedWriter that corrupted frames. Whole batches fill the pipe.
    raws = _mixed_batch(10_000)
    expected = _outcomes(AvroDecoder(SchemaResolver({1: SCHEMA_PATH}), "matched_at", 2000).decode_many(raws))
    pid = helper_decoder._helper().pid
    done = threading.Event()

    def stop_and_continue() -> None:
        while not done.is_set():
            os.kill(pid, signal.SIGSTOP)
            time.sleep(0.002)
            os.kill(pid, signal.SIGCONT)
            time.sleep(0.003)

    pauser = threading.Thread(target=stop_and_continue)
    pauser.start()
    try:
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            helper_decoder.prefetch(raws)
            assert _outcomes(helper_decoder.decode_many(raws)) == expected
    finally:
        done.set()
        pauser.join()
        os.kill(pid, signal.SIGCONT)
    assert helper_decoder._proc is not None and helper_decoder._proc.pid == pid  # no fallback hid it


def test_closing_with_a_stopped_helper_and_unsent_frames_does_not_hang():
    # The frames of a prefetched batch wait in the sender thread while the helper is stopped (its
    # pipe full): close() gives up on them, kills the helper and ends the thread.
    decoder = ProcessAvroDecoder({1: SCHEMA_PATH}, None, "matched_at", 2000)
    proc = decoder._helper()
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        decoder.prefetch(_mixed_batch(20_000))  # ~4 MB: more than the pipes hold
        time.sleep(0.2)
        sender = decoder._sender
        started = time.monotonic()
        decoder.close()
        assert time.monotonic() - started < 10
    finally:
        os.kill(proc.pid, signal.SIGCONT) if proc.poll() is None else None
    assert proc.poll() is not None and not sender._thread.is_alive()


def test_a_dead_helper_costs_nothing_but_speed():
    # the decoder's clock is the test's: on a loaded machine the in-worker decoding after the
    # kill once outlasted a wall-clock restart delay (0.5 s, later 3 s)
    now = [1000.0]
    helper_decoder = ProcessAvroDecoder({1: SCHEMA_PATH}, None, "matched_at", 2000, restart_after_s=3.0,
                                        clock=lambda: now[0])
    raws = _mixed_batch(1_700)
    expected = _outcomes(AvroDecoder(SchemaResolver({1: SCHEMA_PATH}), "matched_at", 2000).decode_many(raws))
    results = helper_decoder.decode_many(raws)
    got = [next(results) for _ in range(700)]
    first = helper_decoder._proc
    first.kill()
    first.wait()
    got.extend(results)  # the rest of the batch is decoded in the worker
    assert _outcomes(got) == expected
    assert _outcomes(helper_decoder.decode_many(raws)) == expected  # in the worker: no restart yet
    assert helper_decoder._proc is None
    now[0] += 2.9
    assert _outcomes(helper_decoder.decode_many(raws)) == expected and helper_decoder._proc is None
    now[0] += 0.2  # the restart delay has passed
    assert _outcomes(helper_decoder.decode_many(raws)) == expected
    assert helper_decoder._proc is not None and helper_decoder._proc.pid != first.pid  # a new helper
    helper_decoder.close()


def test_nested_logical_types_cross_the_process_boundary(tmp_path):
    schema = {"type": "record", "name": "Outer", "fields": [
        {"name": "at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "legs", "type": {"type": "array", "items": {"type": "record", "name": "Leg", "fields": [
            {"name": "amount", "type": {"type": "bytes", "logicalType": "decimal", "precision": 9, "scale": 2}},
            {"name": "when", "type": {"type": "long", "logicalType": "timestamp-millis"}}]}}}]}
    path = tmp_path / "outer.avsc"
    path.write_text(json.dumps(schema))
    parsed = load_schema(path)
    when = datetime(2026, 3, 2, 6, 0, tzinfo=UTC)
    raws = [RawRecord("t", 0, i, None, None, encode_confluent(9, parsed, {"at": when, "legs": [
        {"amount": Decimal(f"{i}.05"), "when": when}]})) for i in range(3)]
    decoder = ProcessAvroDecoder({9: str(path)}, None, "at", 10_000)
    try:
        got = list(decoder.decode_many(raws))
    finally:
        decoder.close()
    assert [r.value for r in got] == [{"at": when, "legs": [{"amount": Decimal(f"{i}.05"), "when": when}]}
                                      for i in range(3)]
    assert got[0].event_time_ms == int(when.timestamp() * 1000)


def test_an_unreachable_registry_holds_the_batch_back(sample):
    from stream_app.codecs.registry import RegistryUnavailable

    registry = _Registry({})
    url = registry.url
    registry.server.shutdown()
    registry.server.server_close()
    decoder = ProcessAvroDecoder({}, {"url": url, "timeout": 1}, "matched_at", 1_000_000)
    try:
        payload = encode_confluent(42, load_schema(SCHEMA_PATH), sample)
        with pytest.raises(RegistryUnavailable):
            list(decoder.decode_many([raw(payload)]))
    finally:
        decoder.close()


def test_a_helper_that_cannot_start_leaves_decoding_to_the_worker(monkeypatch, caplog):
    from stream_app.ops import helper_process

    monkeypatch.setattr(helper_process.sys, "executable", "/bin/false")
    decoder = ProcessAvroDecoder({1: SCHEMA_PATH}, None, "matched_at", 2000)
    raws = _mixed_batch(300)
    expected = _outcomes(AvroDecoder(SchemaResolver({1: SCHEMA_PATH}), "matched_at", 2000).decode_many(raws))
    with caplog.at_level("WARNING"):
        assert _outcomes(decoder.decode_many(raws)) == expected
        assert _outcomes(decoder.decode_many(raws)) == expected
    assert decoder._proc is None
    assert len([r for r in caplog.records if "decode helper" in r.getMessage()]) == 1  # not one per batch
