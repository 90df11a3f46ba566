"""The shared pipeline without a broker: retries, commit points, dead letters, determinism."""

from __future__ import annotations

from pathlib import Path

import pytest

from stream_app.codecs.avro import encode_confluent, load_schema
from stream_app.config import parse_config
from stream_app.core.records import RawRecord
from stream_app.core.windows import Checkpoint, FileCut, FileKey
from stream_app.pipeline.files import FilePipeline, FlushSummary
from stream_app.pipeline.journal import Journal
from stream_app.pipeline.memory import MemoryStateStore
from stream_app.pipeline.wiring import build_assembler, build_decoder, window_policy
from stream_app.replay.run import END_OF_INPUT_MS, commit_due, run_records
from stream_app.resources import AVRO_DIR
from stream_app.sinks.base import SinkError
from stream_app.sinks.local import LocalSink
from stream_app.tools.demo import matched_records
from tests.helpers import CollectingPublisher, settings_for

SCHEMA = load_schema(AVRO_DIR / "matched_record.avsc")


def raws(count: int, seed: int = 1, partitions: int = 1) -> list[RawRecord]:
    out = []
    for i, rec in enumerate(matched_records(count, seed, span_hours=5)):
        p = i % partitions
        out.append(RawRecord("in", p, i // partitions, None, None, encode_confluent(1, SCHEMA, rec)))
    return out


class FlakySink(LocalSink):
    def __init__(self, target: Path, failures: int) -> None:
        super().__init__(target)
        self.failures = failures

    def write(self, name: str, chunks, before_publish=None):
        if self.failures > 0:
            self.failures -= 1
            raise SinkError(f"writing {name} failed: Input/output error", "EIO")
        return super().write(name, chunks, before_publish)


def pipeline(out: Path, sink=None, spool: Path | None = None, compression: str = "none", settings=None,
             state: MemoryStateStore | None = None, spill: Path | None = None, pressure_cut: bool = False,
             **worker) -> tuple[FilePipeline, CollectingPublisher, MemoryStateStore]:
    settings = settings or settings_for(out, **worker)
    publisher, state = CollectingPublisher(), state or MemoryStateStore()
    p = FilePipeline(window_policy(settings), settings.worker.group_specs, build_decoder(settings),
                     build_assembler(settings), sink or LocalSink(out), state, publisher, Journal("w1"),
                     retry_initial_ms=100, retry_max_ms=1000, spool_dir=spool, compression=compression,
                     spill_dir=spill, pressure_cut=pressure_cut)
    return p, publisher, state


def test_write_failure_keeps_the_batch_backs_off_and_retries(tmp_path):
    sink = FlakySink(tmp_path, failures=2)
    p, pub, state = pipeline(tmp_path, sink, maxRecordsPerFile=10, window={"sizeMs": 86_400_000})
    p.process(raws(10), now_wall_ms=0)
    commit_due(p, 0)
    assert [e["attempt"] for e in pub.of_type("write-failed")] == [1]
    assert pub.of_type("write-failed")[0]["error_class"] == "EIO"
    assert state.get_checkpoint(("in", 0)).offset == 0 and p.buffered_records == 10
    assert p.due_cuts(10) == []                    # backing off: 50..100 ms with jitter
    commit_due(p, 100)
    assert [e["attempt"] for e in pub.of_type("write-failed")] == [1, 2]
    assert p.due_cuts(120) == []                   # second backoff is 100..200 ms
    commit_due(p, 400)
    assert len(pub.of_type("created")) == 1 and p.buffered_records == 0
    assert state.get_checkpoint(("in", 0)).offset == 10
    assert len(list(tmp_path.glob("*.txt"))) == 1


ONE_DAY_IDLE = {"sizeMs": 86_400_000, "idleTimeoutMs": 1000}


def _idle_close_with_first_part_failing(out: Path):
    """25 records of one window cut in parts of 10, closed as idle; the first write fails."""
    p, pub, state = pipeline(out, FlakySink(out, failures=1), maxRecordsPerFile=10, window=ONE_DAY_IDLE)
    p.process(raws(25), now_wall_ms=0)
    p.tick(END_OF_INPUT_MS)  # idle: part 2 is cut and the window closes
    commit_due(p, END_OF_INPUT_MS)
    return p, pub, state


def test_parts_of_a_window_are_finalized_in_order_behind_a_failed_one(tmp_path):
    p, pub, state = _idle_close_with_first_part_failing(tmp_path)
    assert [e["attempt"] for e in pub.of_type("write-failed")] == [1]
    assert not pub.of_type("created") and not list(tmp_path.glob("F_*"))  # parts 1, 2 wait for part 0
    assert not state.facts  # and nothing says the window is closed while part 0 is unwritten
    assert p.due_cuts(END_OF_INPUT_MS) == []  # part 0 backs off, and holds back the later parts
    commit_due(p, END_OF_INPUT_MS + 2000)
    assert [e["part"] for e in pub.of_type("created")] == [0, 1, 2]
    (facts,) = state.facts.values()
    assert facts.closed and sorted(facts.parts) == [0, 1, 2]


def test_a_restart_after_a_failed_part_re_creates_the_same_files(tmp_path):
    """Crash after the failed write: the restart reads the records again and makes the reference."""
    crashed, reference = tmp_path / "crashed", tmp_path / "reference"
    crashed.mkdir(), reference.mkdir()
    _, _, state = _idle_close_with_first_part_failing(crashed)  # ... and the process dies here
    restarted, pub, _ = pipeline(crashed, state=state, maxRecordsPerFile=10, window=ONE_DAY_IDLE)
    run_records(restarted, raws(25)[state.checkpoints.get(("in", 0), Checkpoint(0, None)).offset:])
    assert not pub.dead  # no record of the unwritten part was taken for a late one
    p, _, _ = pipeline(reference, maxRecordsPerFile=10, window=ONE_DAY_IDLE)
    run_records(p, raws(25))
    names = sorted(f.name for f in reference.glob("F_*"))
    assert len(names) == 3 and names == sorted(f.name for f in crashed.glob("F_*"))
    assert all((crashed / n).read_bytes() == (reference / n).read_bytes() for n in names)


def test_template_failure_is_finalize_failed_and_blocks_the_commit(tmp_path):
    p, pub, state = pipeline(tmp_path, recordTemplate="{{ record.amount | pad(2) }}\n", maxRecordsPerFile=5,
                             window={"sizeMs": 86_400_000})
    p.process(raws(5), 0)
    commit_due(p, 0)
    (event,) = pub.of_type("finalize-failed")
    assert event["error_class"] == "TEMPLATE_ERROR" and "width 2" in event["error_message"]
    assert state.get_checkpoint(("in", 0)).offset == 0


def test_bad_records_are_dead_lettered_and_do_not_block_commits(tmp_path):
    p, pub, state = pipeline(tmp_path, maxRecordsPerFile=3, window={"sizeMs": 86_400_000})
    good = raws(3)
    bad = RawRecord("in", 0, 3, 123, b"k", b"\x05garbage", (("trace", b"1"),))
    shifted = [RawRecord("in", 0, 4 + i, None, None, r.value) for i, r in enumerate(raws(3, seed=2))]
    p.process(good + [bad] + shifted, 0)
    commit_due(p, 0)
    assert [(d[0].offset, d[1]) for d in pub.dead] == [(3, "BAD_MAGIC_BYTE")]
    assert state.get_checkpoint(("in", 0)).offset == 7


def test_run_records_is_deterministic_and_partition_scoped(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    records = raws(300, partitions=2)
    for out in (a, b):
        p, pub, _ = pipeline(out, maxRecordsPerFile=40)
        summary = run_records(p, records, batch_size=37)
        late = [d for d in pub.dead if d[1] == "LATE_RECORD"]
        assert summary.records + len(late) == 300 and len(late) < 5
    files_a = sorted(f.name for f in a.glob("F_*"))
    assert files_a == sorted(f.name for f in b.glob("F_*")) and len(files_a) > 6
    assert all((a / n).read_bytes() == (b / n).read_bytes() for n in files_a)
    assert any("_p1_" in n for n in files_a) and any("_p0_" in n for n in files_a)


def test_flush_summary_and_window_events(tmp_path):
    p, pub, _ = pipeline(tmp_path, maxRecordsPerFile=1000)
    run_records(p, raws(100))
    assert {e["event_type"] for e in pub.events} >= {"opened", "closed", "created", "flush-summary"}
    assert len(pub.of_type("opened")) == len(pub.of_type("closed")) == 5  # 5 one-hour windows
    assert sum(e["records"] for e in pub.of_type("created")) == 100


def test_pressure_cut_an_opt_in_cuts_the_largest_open_part(tmp_path):
    p, pub, state = pipeline(tmp_path, maxRecordsPerFile=100, window={"sizeMs": 86_400_000}, pressure_cut=True)
    p.process(raws(7), 0)
    assert p.buffered_records == 7 and p.relieve_pressure()
    summary = commit_due(p, 0)
    (event,) = pub.of_type("created")
    assert event["reason"] == "pressure" and summary.records == 7 and p.buffered_records == 0
    assert not p.relieve_pressure()  # nothing left to cut


def test_pressure_moves_records_to_disk_and_never_changes_a_file(tmp_path):
    """Backpressure after every record (a buffer of 3, parts of 40, five windows): the largest
    open part goes to disk each time, and the files equal a run without any pressure."""
    records = raws(200)
    reference, _, _ = pipeline(tmp_path / "ref", maxRecordsPerFile=40)
    (tmp_path / "ref").mkdir()
    run_records(reference, records)
    out, spill = tmp_path / "out", tmp_path / "spill"
    out.mkdir()
    p, pub, _ = pipeline(out, maxRecordsPerFile=40, spill=spill)
    most = 0
    for record in records:
        p.process([record], 0)
        most = max(most, p.buffered_records)
        while p.buffered_records >= 3:  # as the worker's backpressure: write what is due, else move
            if not p.due_cuts(0):
                assert p.relieve_pressure()
            commit_due(p, 0)
    p.tick(END_OF_INPUT_MS)
    commit_due(p, END_OF_INPUT_MS)
    assert _files(out) == _files(tmp_path / "ref") and len(_files(out)) >= 5
    assert "pressure" not in {e["reason"] for e in pub.of_type("created")}
    assert most <= 40 and list(spill.rglob("*")) and not list(spill.rglob("*.spill"))  # gone once cut


def test_a_revoke_discards_the_spills_of_its_partitions(tmp_path):
    spill = tmp_path / "spill"
    p, _, _ = pipeline(tmp_path, maxRecordsPerFile=100, window={"sizeMs": 86_400_000}, spill=spill)
    p.process(raws(7), 0)
    assert p.relieve_pressure() and p.buffered_records == 0 and list(spill.rglob("*.spill"))
    assert not p.relieve_pressure()  # nothing left in memory
    p.revoke([("in", 0)])
    assert not list(spill.rglob("*.spill"))


def _files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.name != "manifest.jsonl"}


@pytest.mark.parametrize("schema_id", [None, "pcs-clearing", "settlement-report", "fixed-clearing", "net-positions"])
def test_streaming_append_gives_the_same_bytes_as_buffered_parts(tmp_path, schema_id):
    from tests.core.test_structured import structured_config

    def settings(out):
        if schema_id is None:
            return settings_for(out, maxRecordsPerFile=35)
        return parse_config(structured_config(out, schema_id, maxRecordsPerFile=35))

    records = raws(300, partitions=2)
    outputs = []
    for streaming in (False, True):
        out = tmp_path / f"out-{streaming}"
        out.mkdir()
        spool = tmp_path / "spool" if streaming else None
        p, pub, _ = pipeline(out, spool=spool, settings=settings(out))
        if streaming:
            p.process(records[:50], 0)
            assert p.buffered_records == 0  # nothing held in memory
            assert list((tmp_path / "spool").rglob("*.spool"))  # ... but on disk
        run_records(p, records)
        outputs.append(_files(out))
        if streaming:
            assert not list((tmp_path / "spool").rglob("*.spool"))  # spools removed after finalize
    assert outputs[0] == outputs[1] and len(outputs[0]) >= 10


def test_streaming_restart_discards_spools_and_rebuilds_them(tmp_path):
    records = raws(120)
    reference = tmp_path / "ref"
    reference.mkdir()
    run_records(pipeline(reference, spool=tmp_path / "s0", maxRecordsPerFile=1000)[0], records)
    out = tmp_path / "out"
    out.mkdir()
    first, _, state = pipeline(out, spool=tmp_path / "spool", maxRecordsPerFile=1000)
    first.process(records[:70], 0)
    commit_due(first, 0)
    checkpoint = state.get_checkpoint(("in", 0))
    # crash: a new pipeline over the same state and spool directory re-reads from the checkpoint
    second, _, _ = pipeline(out, spool=tmp_path / "spool", state=state, maxRecordsPerFile=1000)
    run_records(second, [r for r in records if r.offset >= checkpoint.offset])
    assert _files(out) == _files(reference)


def test_gzip_output_is_deterministic(tmp_path):
    import gzip

    plain, zipped_a, zipped_b = tmp_path / "p", tmp_path / "a", tmp_path / "b"
    for d in (plain, zipped_a, zipped_b):
        d.mkdir()
    records = raws(200)
    run_records(pipeline(plain, maxRecordsPerFile=60)[0], records)
    for d in (zipped_a, zipped_b):
        run_records(pipeline(d, compression="gzip", maxRecordsPerFile=60)[0], records)
    a, b, p = _files(zipped_a), _files(zipped_b), _files(plain)
    assert a == b and set(a) == set(p)
    for name, body in a.items():
        assert body[:2] == b"\x1f\x8b" and body[4:8] == b"\0\0\0\0"  # gzip magic, mtime 0
        assert gzip.decompress(body) == p[name]


def test_replay_progress_logs_rate_and_eta_when_not_on_a_terminal(caplog, monkeypatch):
    import logging

    import stream_app.replay.cli as replay_cli
    from stream_app.core.records import RawRecord

    clock = iter([0.0, 6.0, 6.0])
    monkeypatch.setattr(replay_cli.time, "monotonic", lambda: next(clock))
    caplog.set_level(logging.INFO, logger="stream_app.replay.cli")
    progress = replay_cli.Progress(total=200)
    progress.written(FlushSummary(files=3))
    progress.update([RawRecord("t", 0, i, None, None, b"x" * 10) for i in range(100)])
    progress.close()
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith("replayed 100/200 records (17 rec/s") and "3 files written, ETA 6 s" in line


def test_replay_progress_on_a_terminal_shows_records_of_the_total_files_and_eta(capsys, monkeypatch):
    import stream_app.replay.cli as replay_cli
    from stream_app.core.records import RawRecord

    monkeypatch.setattr(replay_cli.sys.stderr, "isatty", lambda: True)
    progress = replay_cli.Progress(total=200)
    progress.update([RawRecord("t", 0, i, None, None, b"x" * 10) for i in range(100)])
    progress.written(FlushSummary(files=2))
    progress.written(FlushSummary(files=1))
    progress.close()
    bar = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]
    assert "100/200" in bar and "3 files" in bar and "<" in bar  # tqdm's "elapsed<remaining"


def test_the_commit_gate_moves_only_once_facts_and_checkpoint_are_confirmed(tmp_path):
    p, pub, state = pipeline(tmp_path, maxRecordsPerFile=10, window={"sizeMs": 86_400_000})
    p.process(raws(25), now_wall_ms=0)
    for cut in p.due_cuts(0):
        p.record_outcome(cut, p.write_cut(cut), 0, FlushSummary())
    assert p.has_unpersisted_facts and not state.facts  # journal events go out first
    assert len(pub.of_type("created")) == 2
    moved = p.advance_checkpoints()  # writes the facts, then the checkpoint
    assert state.facts and moved[("in", 0)].offset == 20 and state.checkpoints[("in", 0)].offset == 20
    assert p.persisted_checkpoint(("in", 0)) is None  # not committable before it is confirmed
    p.confirm_checkpoints()
    assert p.persisted_checkpoint(("in", 0)).offset == 20


def test_a_streaming_part_of_a_revoked_partition_is_never_written_from_its_empty_cut(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    p, pub, state = pipeline(out, spool=tmp_path / "spool", maxRecordsPerFile=10, window={"sizeMs": 86_400_000})
    p.process(raws(10), now_wall_ms=0)
    (cut,) = p.due_cuts(0)
    assert not cut.records and p.is_pending(cut)  # streaming: the records are in the spool only
    p.revoke([("in", 0)])  # a rebalance while the driver is between two writes
    assert not p.is_pending(cut)
    outcome = p.write_cut(cut)
    assert outcome.result is None and outcome.error_class == "PARTITION_REVOKED"
    assert not [f for f in out.iterdir() if f.name != "manifest.jsonl"]


def test_a_cut_that_carries_its_records_is_written_by_a_streaming_pipeline(tmp_path):
    """Replay of a window rebuilds cuts with their records; streaming settings must not refuse them."""
    out = tmp_path / "out"
    out.mkdir()
    p, _, _ = pipeline(out, spool=tmp_path / "spool", maxRecordsPerFile=10, window={"sizeMs": 86_400_000})
    records = [p.prepare(raw) for raw in raws(5)]
    start = records[0].event_time_ms - records[0].event_time_ms % 86_400_000
    key = FileKey("in", 0, start, start + 86_400_000)
    outcome = p.write_cut(FileCut.of(key, 0, records, "watermark", True))
    assert outcome.result is not None and (out / outcome.result.name).exists()


def test_journal_event_ids_are_unique_per_app():
    from stream_app.core.records import SourceRecord

    key = FileKey("in", 0, 0, 3_600_000)
    cut = FileCut.of(key, 0, [SourceRecord("in", 0, 5, 1, {})])
    a, b = Journal("w", "app-a"), Journal("w", "app-b")
    assert a.created(cut, "f", 1, "x")["event_id"] == Journal("w2", "app-a").created(cut, "f", 1, "x")["event_id"]
    assert a.created(cut, "f", 1, "x")["event_id"] != b.created(cut, "f", 1, "x")["event_id"]
    assert a.opened(key)["event_id"] != b.opened(key)["event_id"]


@pytest.mark.parametrize("scope", ["partition", "window"])
def test_implausible_event_times_are_dead_letters_and_the_partition_flows_on(tmp_path, scope):
    """A year-9999 or microsecond timestamp would open a window that never closes."""
    from datetime import UTC, datetime

    from stream_app.config import parse_config
    from stream_app.pipeline.wiring import build_pipeline, build_routing
    from stream_app.replay.run import LoopbackSender, run_records, run_window_records
    from tests.helpers import config_dict

    records = list(matched_records(30, 3, span_hours=2))
    records[5]["matched_at"] = datetime(9999, 12, 31, tzinfo=UTC)
    records[9]["matched_at"] = datetime(1999, 12, 31, 23, 59, tzinfo=UTC)
    values = [RawRecord("in", 0, i, None, None, encode_confluent(1, SCHEMA, r)) for i, r in enumerate(records)]
    data = config_dict(tmp_path, maxRecordsPerFile=1000, fileScope=scope,
                       fileNameTemplate="F_{{ window_start | ts('%Y%m%d%H') }}_{{ part }}.txt")
    settings = parse_config(data)
    publisher = CollectingPublisher()
    if scope == "window":
        files = build_pipeline(settings, MemoryStateStore(), publisher, sources=(("in", 0),))
        sender = LoopbackSender(settings.repartition_topic)
        routing = build_routing(settings, MemoryStateStore(), publisher, sender)
        summary = run_window_records(routing, files, sender, (("in", 0),), values)
    else:
        summary = run_records(build_pipeline(settings, MemoryStateStore(), publisher), values)
    assert [(raw.offset, reason) for raw, reason, _ in publisher.dead] == [
        (5, "EVENT_TIME_OUT_OF_RANGE"), (9, "EVENT_TIME_OUT_OF_RANGE")]
    assert summary.records == 28  # every other record in a file, the windows closed


def test_event_time_bounds_are_validated(tmp_path):
    from stream_app.config import ConfigError, parse_config
    from tests.helpers import config_dict

    data = config_dict(tmp_path)
    data["input"] = {"minEventTime": "2026-01-01T00:00:00"}
    with pytest.raises(ConfigError, match="no time zone"):
        parse_config(data)
    data["input"] = {"minEventTime": "2030-01-01T00:00:00Z", "maxEventTime": "2029-01-01T00:00:00Z"}
    with pytest.raises(ConfigError, match="minEventTime must be before maxEventTime"):
        parse_config(data)


def test_a_terminal_assembly_error_halts_the_part_once_instead_of_retrying(tmp_path, caplog):
    """A template, validation, encoding, width or XSD error fails the same way on every retry:
    one finalize-failed (terminal) event, one ERROR line, the part halted; later flushes do
    nothing for it and its offsets stay uncommitted."""
    import logging

    from stream_app.ops.metrics import Metrics

    p, pub, state = pipeline(tmp_path, recordTemplate="{{ record.amount | pad(2) }}\n", maxRecordsPerFile=5,
                             window={"sizeMs": 86_400_000})
    p.metrics = Metrics()
    p.process(raws(5), 0)
    with caplog.at_level(logging.WARNING, logger="stream_app.pipeline"):
        for hour in range(0, 48):
            commit_due(p, hour * 3_600_000)
    (event,) = pub.of_type("finalize-failed")
    assert event["terminal"] is True and event["error_class"] == "TEMPLATE_ERROR"
    assert [r.levelname for r in caplog.records] == ["ERROR"] and "needs a fix and a restart" in caplog.text
    assert state.get_checkpoint(("in", 0)).offset == 0 and p.halted_reason is not None
    (key, part), = p.halted
    assert p.metrics.halted_files.labels(key.id)._value.get() == 1


class RefusingSink(LocalSink):
    def __init__(self, target: Path, error: SinkError) -> None:
        super().__init__(target)
        self.error, self.calls = error, 0

    def write(self, name: str, chunks, before_publish=None):
        self.calls += 1
        raise self.error


@pytest.mark.parametrize("error, terminal", [
    (SinkError("S3 PutObject failed: AccessDenied", "AccessDenied", transient=False), True),
    (SinkError("S3 PutObject failed: NoSuchBucket", "NoSuchBucket", transient=False), True),
    (SinkError("writing f failed: Input/output error", "EIO"), False),
    (SinkError("S3 PutObject failed: SlowDown", "SlowDown"), False),
])
def test_sink_errors_are_halted_when_terminal_and_backed_off_when_transient(tmp_path, error, terminal):
    sink = RefusingSink(tmp_path, error)
    p, pub, _ = pipeline(tmp_path, sink, maxRecordsPerFile=5, window={"sizeMs": 86_400_000})
    p.process(raws(5), 0)
    for minute in range(0, 30):
        commit_due(p, minute * 60_000)
    events = pub.of_type("write-failed")
    assert all(e["terminal"] is terminal for e in events)
    assert (sink.calls, len(events)) == (1, 1) if terminal else sink.calls == len(events) > 5


def test_a_halted_part_of_a_revoked_partition_is_no_longer_reported_here(tmp_path):
    from stream_app.ops.metrics import Metrics

    p, pub, _ = pipeline(tmp_path, recordTemplate="{{ record.amount | pad(2) }}\n", maxRecordsPerFile=5,
                         window={"sizeMs": 86_400_000})
    p.metrics = Metrics()
    p.process(raws(5), 0)
    commit_due(p, 0)
    assert p.halted_reason is not None
    p.revoke([("in", 0)])
    assert p.halted == {} and p.halted_reason is None  # its new owner meets the error and reports it
    assert b"stream_app_halted_file{" not in p.metrics.render()


@pytest.mark.parametrize("scope", ["partition", "window"])
def test_group_values_resolve_in_template_file_names_headers_and_footers(tmp_path, scope):
    """``group.<field>`` passes preflight (from the sample record's values, as structured mode
    does) and renders each file's own group value at run time."""
    from stream_app.config import parse_config
    from stream_app.pipeline.wiring import build_pipeline, build_routing
    from stream_app.replay.run import LoopbackSender, run_records, run_window_records
    from stream_app.tools.preflight import run_preflight
    from tests.helpers import config_dict

    name = ("CLR_{{ group.currency }}_{{ window_start | ts('%Y%m%d%H') }}_{{ part }}.txt" if scope == "window"
            else "CLR_{{ group.currency }}_p{{ partition }}_{{ window_start | ts('%Y%m%d%H') }}_{{ part }}.txt")
    data = config_dict(tmp_path, fileScope=scope, groupBy=["currency"], fileNameTemplate=name,
                       headerTemplate="H|{{ group.currency }}\n",
                       footerTemplate="T|{{ group.currency }}|{{ totals.count }}\n")
    settings = parse_config(data)
    assert "file names are unique per file key and safe" in run_preflight(settings)
    records = list(matched_records(60, 3, span_hours=1))
    values = [RawRecord("in", 0, i, None, None, encode_confluent(1, SCHEMA, r)) for i, r in enumerate(records)]
    publisher = CollectingPublisher()
    if scope == "window":
        files = build_pipeline(settings, MemoryStateStore(), publisher, sources=(("in", 0),))
        sender = LoopbackSender(settings.repartition_topic)
        run_window_records(build_routing(settings, MemoryStateStore(), publisher, sender), files, sender,
                           (("in", 0),), values)
    else:
        run_records(build_pipeline(settings, MemoryStateStore(), publisher), values)
    currencies = {r["currency"] for r in records}
    written = sorted(p.name for p in tmp_path.glob("CLR_*.txt"))
    assert {n.split("_")[1] for n in written} == currencies and len(currencies) > 1
    for path in tmp_path.glob("CLR_*.txt"):
        currency = path.name.split("_")[1]
        lines = path.read_text().splitlines()
        assert lines[0] == f"H|{currency}" and lines[-1].startswith(f"T|{currency}|")
        assert all(line.endswith(f"|{currency}") for line in lines[1:-1])
