"""Routed runs prepared in the prepare helper process are the runs the worker prepares itself,
whatever happens to the helper (tests/core/test_prepared.py: the parts those rows make)."""

from __future__ import annotations

import os
import signal

import pytest

from stream_app.codecs import DecodeError
from stream_app.codecs.avro import SchemaResolver, encode_confluent
from stream_app.codecs.carried import CarryingAvroDecoder, as_read
from stream_app.core.records import RawRecord, SourceRecord
from stream_app.core.structured.prepared import RenderedRow
from stream_app.core.structured.project import Violation
from stream_app.pipeline import prepare_process
from stream_app.pipeline.prepare_process import ProcessRunPreparer, RunPreparer
from stream_app.pipeline.wiring import window_scope
from stream_app.resources import AVRO_DIR
from stream_app.tools.demo import matched_records
from tests.pipeline.test_business_files import SCHEMA, XML, window_settings

ROUTING = CarryingAvroDecoder(SchemaResolver({1: str(AVRO_DIR / "matched_record.avsc")}), "matched_at", 1 << 20)


def _runs(sizes: list[int], seed: int = 8) -> list:
    """Routed runs as the routing stage carries them, one record per run that breaks a pack rule
    (its currency), and in the third run a value that cannot be read."""
    values = iter(matched_records(sum(sizes), seed, span_hours=4))
    runs = []
    for index, size in enumerate(sizes):
        entries = []
        for offset in range(size):
            value = next(values)
            if offset == 3:
                value = {**value, "currency": "EURO"}
            record = ROUTING.decode(RawRecord("in", index, offset, None, None, encode_confluent(1, SCHEMA, value)))
            entries.append((offset, record.event_time_ms, record.carried))
        if index == 2:
            entries[size // 2] = (size // 2, 0, as_read(b"\x00garbage"))
        runs.append((("in", index), entries))
    return runs


def _seen(result: list[SourceRecord] | DecodeError) -> object:
    """What a prepared run is, line and error of each rendered row included."""
    if isinstance(result, DecodeError):
        return ("error", result.reason, result.detail)
    return [(r.topic, r.partition, r.offset, r.event_time_ms, r.value, type(r.row).__name__, dict(r.row)
             if isinstance(r.row, RenderedRow) else r.row, getattr(r.row, "line", None), getattr(r.row, "error", None))
            for r in result]


@pytest.fixture
def preparer(tmp_path):
    settings = window_settings(tmp_path, 3, **XML)
    scope = window_scope(settings)
    assert scope is not None and scope.preparer is not None
    yield scope.preparer
    scope.preparer.close()


def _local(preparer: ProcessRunPreparer) -> RunPreparer:
    return preparer._local


def test_runs_prepared_in_the_helper_are_the_runs_the_worker_prepares(preparer):
    runs = _runs([40, 1300, 25, 7])  # one run in several requests
    expected = [_seen(r) for r in _local(preparer).prepare_many(runs)]
    assert [_seen(r) for r in preparer.prepare_many(runs)] == expected
    assert preparer._proc is not None and preparer._proc.poll() is None  # it was the helper
    # what the expectation holds: rendered rows, a carried violation, a damaged run, kept amounts
    first = expected[0]
    assert isinstance(first, list) and first[3][5] == "Violation" and first[0][5] == "RenderedRow"
    assert first[3][6] == Violation("Currency", "regex")
    assert set(first[0][4]) == {"amount", "currency"} and first[0][7].startswith(b"    <Transaction")
    assert expected[2][0] == "error" and isinstance(expected[3], list)


def test_a_batch_left_early_does_not_mix_its_answers_into_the_next(preparer):
    runs = _runs([30, 900, 30, 30])
    batch = preparer.prepare_many(runs)
    next(batch)  # the rest of its answers are on their way, read by nobody
    batch.close()
    later = _runs([50, 20, 10], seed=9)
    assert [_seen(r) for r in preparer.prepare_many(later)] == [_seen(r) for r in _local(preparer).prepare_many(later)]


def test_a_helper_killed_mid_batch_leaves_the_rest_to_the_worker(preparer, caplog):
    runs = _runs([30, 700, 30, 30, 30])
    expected = [_seen(r) for r in _local(preparer).prepare_many(runs)]
    got = []
    with caplog.at_level("WARNING"):
        for result in preparer.prepare_many(runs):
            if not got:
                assert preparer._proc is not None
                os.kill(preparer._proc.pid, signal.SIGKILL)
            got.append(_seen(result))
    assert got == expected
    assert preparer._proc is None  # prepared in the worker until the helper may start again
    assert len([r for r in caplog.records if "prepare helper" in r.getMessage()]) == 1


def test_a_helper_that_cannot_start_leaves_the_runs_to_the_worker(preparer, monkeypatch):
    from stream_app.ops import helper_process

    monkeypatch.setattr(helper_process.sys, "executable", "/bin/false")
    runs = _runs([20, 20, 20])
    assert [_seen(r) for r in preparer.prepare_many(runs)] == [_seen(r) for r in _local(preparer).prepare_many(runs)]


def test_the_helper_builds_the_preparer_the_worker_has(preparer):
    """The helper's settings are the worker's (as JSON): the same pack, fields and kept values."""
    answer = prepare_process._answerer(preparer._settings)
    runs = _runs([15])
    import marshal
    import pickle

    items = pickle.loads(answer(marshal.dumps((runs[0][0], runs[0][1]))))
    assert items == _local(preparer).items(*runs[0])
    assert isinstance(items[0][0], tuple) and items[0][0][0].startswith(b"    <Transaction")  # (line, error, folded)


def test_prefetched_batches_are_taken_in_order_and_one_never_taken_is_skipped(preparer):
    first, dropped, second = _runs([30, 600]), _runs([40, 40], seed=9), _runs([25, 700, 5], seed=10)
    for batch in (first, dropped, second):
        preparer.prefetch(batch, batch)
    assert len(preparer._prefetched) == 3 and preparer._in_flight > 0  # all sent before any is taken
    local = _local(preparer)
    assert [_seen(r) for r in preparer.prepare_many(first, first)] == [_seen(r) for r in local.prepare_many(first)]
    # taken from what was sent ahead: the later batches' requests are still in flight, none sent again
    assert preparer._in_flight == len(prepare_process._pieces(dropped)) + len(prepare_process._pieces(second))
    # ``dropped`` was never taken (a rebalance): its answers are read past, not mixed in
    assert [_seen(r) for r in preparer.prepare_many(second, second)] == \
        [_seen(r) for r in local.prepare_many(second)]
    assert preparer._in_flight == 0 and not preparer._prefetched
    # a batch that was not prefetched is prepared as before
    later = _runs([15, 15], seed=11)
    assert [_seen(r) for r in preparer.prepare_many(later)] == [_seen(r) for r in local.prepare_many(later)]


def test_a_helper_killed_after_a_prefetch_leaves_that_batch_to_the_worker(preparer):
    runs = _runs([30, 700, 30])
    preparer.prefetch(runs, runs)
    assert preparer._proc is not None
    os.kill(preparer._proc.pid, signal.SIGKILL)
    assert [_seen(r) for r in preparer.prepare_many(runs, runs)] == \
        [_seen(r) for r in _local(preparer).prepare_many(runs)]
