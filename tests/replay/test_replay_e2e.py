"""Replay against the broker: byte-identical to the live run, by range and by recorded window."""

from __future__ import annotations

import time

import pytest
from click.testing import CliRunner

from stream_app.cli import main
from tests.harness import LiveWorker, avro_values, wait_for

pytestmark = pytest.mark.e2e


def _files(directory) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.name != "manifest.jsonl"}


@pytest.fixture(scope="module")
def live_run(kafka_bootstrap, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("live")
    worker = LiveWorker(kafka_bootstrap, tmp_path, partitions=2, maxRecordsPerFile=25, lateRecords="currentWindow")
    worker.produce(avro_values(300, seed=41, span_hours=3.5))
    worker.start()
    try:
        wait_for(lambda: sum(e["records"] for e in {e["event_id"]: e for e in worker.created()}.values()) >= 300,
                 90, what="the live run")
    finally:
        worker.stop()
    return worker


def replay(worker, *args):
    result = CliRunner().invoke(main, ["replay", "--config", str(worker.config_path), *args])
    return result.exit_code, result.output


@pytest.mark.both_brokers
def test_replay_of_the_whole_range_is_byte_identical(live_run, tmp_path):
    code, output = replay(live_run, "--out", str(tmp_path / "r"))
    assert code == 0, output
    assert _files(tmp_path / "r") == live_run.files() and "records" in output


def test_replay_of_a_recorded_window_is_byte_identical(live_run, tmp_path):
    code, output = replay(live_run, "--window", "2026-03-02T01:00:00Z", "--out", str(tmp_path / "w"))
    assert code == 0, output
    replayed = _files(tmp_path / "w")
    live = {n: b for n, b in live_run.files().items() if "_20260302T0100_" in n}
    assert replayed == live and len(live) >= 4  # both partitions, count-rolled parts


def test_replay_of_one_partition_and_offset_range(live_run, tmp_path):
    code, output = replay(live_run, "--partitions", "1", "--from-offset", "1=0", "--out", str(tmp_path / "p"))
    assert code == 0, output
    replayed = _files(tmp_path / "p")
    assert replayed and all("_p1_" in n for n in replayed)
    assert replayed == {n: b for n, b in live_run.files().items() if "_p1_" in n}


@pytest.mark.both_brokers
def test_verify_reports_every_difference_and_writes_nothing(live_run, tmp_path):
    code, output = replay(live_run, "--verify")
    assert code == 0, output
    assert "verified" in output
    victim = sorted(live_run.out.glob("F_*"))[0]
    original = victim.read_bytes()
    try:
        victim.write_bytes(original.replace(b"D|1|", b"D|9|", 1))
        code, output = replay(live_run, "--verify")
        assert code == 1 and f"DIFFERENT   {victim.name}" in output
        victim.unlink()
        code, output = replay(live_run, "--verify")
        assert code == 1 and f"MISSING     {victim.name}" in output
        assert not victim.exists()  # verify never writes
    finally:
        victim.write_bytes(original)


def test_log_ends_are_read_not_trusted_from_the_listing(kafka_bootstrap):
    """Table recovery relies on this: the embedded broker lists stale end offsets after
    single-record produce requests (what Faust's table writes are)."""
    import asyncio
    import uuid

    from aiokafka import AIOKafkaProducer

    from stream_app.replay.reader import RangeReader
    from stream_app.tools.broker import create_topics

    topic = f"ends-{uuid.uuid4().hex[:6]}"
    create_topics(kafka_bootstrap, {topic: 2})

    async def produce_one_by_one() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks=-1)
        await producer.start()
        try:
            for i in range(7):
                await (await producer.send(topic, b"v%d" % i, partition=i % 2))
        finally:
            await producer.stop()

    asyncio.run(produce_one_by_one())
    reader = RangeReader({"bootstrap.servers": kafka_bootstrap})
    try:
        assert reader.log_ends({(topic, 0): 0, (topic, 1): 1}) == {(topic, 0): 4, (topic, 1): 3}
    finally:
        reader.close()


def test_a_time_range_rebuilds_the_windows_that_start_in_it_by_event_time(live_run, tmp_path):
    window_files = {n: b for n, b in live_run.files().items() if "_20260302T0100_" in n}
    code, output = replay(live_run, "--from-time", "2026-03-02T01:00:00Z", "--to-time", "2026-03-02T02:00:00Z",
                          "--out", str(tmp_path / "t"))
    assert code == 0, output
    assert _files(tmp_path / "t") == window_files and window_files
    # an open end takes every window from the start on, none before it
    code, output = replay(live_run, "--from-time", "2026-03-02T02:00:00Z", "--out", str(tmp_path / "late"))
    assert code == 0, output
    later = {n for n in live_run.files() if "_20260302T00" not in n and "_20260302T01" not in n}
    assert set(_files(tmp_path / "late")) == later and later
    # a range that matches nothing says so and fails
    code, output = replay(live_run, "--from-time", "2030-01-01T00:00:00Z", "--to-time", "2030-01-02T00:00:00Z",
                          "--out", str(tmp_path / "none"))
    assert code == 65 and "no file window starts in the time range" in output


def test_a_time_range_without_a_manifest_scans_for_its_windows(live_run, tmp_path):
    import copy

    from tests.helpers import write_config

    data = copy.deepcopy(live_run.config_data)
    elsewhere = tmp_path / "empty-sink"
    elsewhere.mkdir()
    data["sink"]["localTargetDir"] = str(elsewhere)  # a sink that records nothing
    config = write_config(tmp_path / "scan.yaml", data)
    result = CliRunner().invoke(main, ["replay", "--config", str(config), "--from-time", "2026-03-02T01:00:00Z",
                                       "--to-time", "2026-03-02T02:00:00Z", "--out", str(tmp_path / "s")])
    assert result.exit_code == 0, result.output
    assert _files(tmp_path / "s") == {n: b for n, b in live_run.files().items() if "_20260302T0100_" in n}


def test_a_partial_offset_range_never_passes_for_a_live_file(live_run, tmp_path):
    code, output = replay(live_run, "--partitions", "0", "--from-offset", "0=7", "--out", str(tmp_path / "refused"))
    assert code == 65 and "holds only part of the window" in output
    assert not [p for p in (tmp_path / "refused").iterdir() if p.name != "manifest.jsonl"]
    code, output = replay(live_run, "--partitions", "0", "--from-offset", "0=7", "--out", str(tmp_path / "p"),
                          "--allow-partial")
    assert code == 0, output
    replayed = _files(tmp_path / "p")
    live = live_run.files()
    partial = {n for n in replayed if n.startswith("PARTIAL_")}
    assert partial and all(f"PARTIAL     {n}" in output for n in partial)
    assert all(n.removeprefix("PARTIAL_") in live and replayed[n] != live[n.removeprefix("PARTIAL_")] for n in partial)
    assert all(replayed[n] == live[n] for n in replayed if n not in partial)  # whole files keep their names


def test_an_offset_past_the_end_is_an_immediate_error(live_run, tmp_path):
    import time

    started = time.monotonic()
    code, output = replay(live_run, "--partitions", "0", "--to-offset", "0=100000", "--out", str(tmp_path / "x"))
    assert code == 64 and "--to-offset 0=100000 is past the end" in output
    assert time.monotonic() - started < 8


def test_verify_accounts_for_every_file_and_manifest_field(live_run, tmp_path):
    import json

    manifest = live_run.out / "manifest.jsonl"
    original = manifest.read_text()
    stray = live_run.out / "F_STRAY_20260302.txt"
    try:
        stray.write_text("not a clearing file\n")
        code, output = replay(live_run, "--verify")
        assert code == 1 and f"STRAY       {stray.name}" in output
        stray.unlink()
        lines = [json.loads(line) for line in original.splitlines()]
        victim = lines[0]["name"]
        # Verify rebuilds every recorded file from the ranges its manifest line records: an
        # edited line names the file, by the finding the edit leads to.
        edits = [("records", lines[0]["records"] + 1, f"MANIFEST    {victim}: records is"),
                 ("offsets", [{**lines[0]["offsets"][0], "ranges": [[0, 1]]}], f"DIFFERENT   {victim}"),
                 ("part", lines[0]["part"] + 7, f"UNPRODUCED  {victim}"),
                 ("window_end", lines[0]["window_end"] + 1, f"MANIFEST    {victim}: window_end is")]
        for field, value, finding in edits:
            manifest.write_text("\n".join(json.dumps({**e, field: value} if e["name"] == victim else e)
                                          for e in lines) + "\n")
            code, output = replay(live_run, "--verify")
            assert code == 1 and finding in output, (field, output)
        # a removed manifest line: the scan produces its file, which the manifest does not record
        manifest.write_text("\n".join(json.dumps(e) for e in lines[1:]) + "\n")
        code, output = replay(live_run, "--verify")
        assert code == 1 and f"UNRECORDED  {victim}: not in the manifest" in output
        # a manifest line for a file replay never produces
        ghost = {**lines[0], "name": "F_GHOST.txt"}
        manifest.write_text(original + json.dumps(ghost) + "\n")
        code, output = replay(live_run, "--verify")
        assert code == 1 and "UNPRODUCED  F_GHOST.txt" in output
        manifest.write_text(original)
        code, output = replay(live_run, "--verify")
        assert code == 0, output  # untouched: no finding
    finally:
        manifest.write_text(original)
        stray.unlink(missing_ok=True)


@pytest.mark.parametrize("scope", ["partition", "window"])
def test_replay_and_verify_follow_the_cuts_the_clock_and_the_buffer_made(kafka_bootstrap, tmp_path, scope):
    """Cuts the records alone do not decide: early cuts under pressure (the worker.pressureCut
    opt-in), the flush interval and idle closes on the wall clock.  replay --out of the whole range gives the live
    bytes, and --verify of the untouched live output finds nothing, because both rebuild each
    recorded file from the offset ranges its manifest line records."""
    from datetime import timedelta

    from stream_app.codecs.avro import encode_confluent
    from stream_app.tools.demo import matched_records
    from tests.e2e.test_business_files_e2e import WINDOW_SCOPE
    from tests.harness import SCHEMA

    extra = WINDOW_SCOPE if scope == "window" else {}
    worker = LiveWorker(kafka_bootstrap, tmp_path, partitions=2, maxRecordsPerFile=150, maxBufferedRecords=150,
                        pressureCut=True, flushIntervalMs=2500,
                        window={"sizeMs": 3_600_000, "graceMs": 100 * 3_600_000, "idleTimeoutMs": 3000},
                        **extra)
    # three windows interleaved record by record, in three rounds: no window closes by
    # watermark and no part fills, so the buffer limit cuts parts early; the idle close ends
    # every window
    base = list(matched_records(600, seed=19, span_hours=0.5))
    values = [encode_confluent(1, SCHEMA, {**r, "matched_at": r["matched_at"] + timedelta(hours=i % 3)})
              for i, r in enumerate(base)]
    worker.start()
    try:
        worker.wait_for(lambda: worker.log_count("Worker ready") >= 1, 60, what="the worker")
        time.sleep(1.0)
        for start in range(0, 600, 200):
            worker.produce(values[start:start + 200])
            time.sleep(1.0)  # less than the idle timeout
        wait_for(lambda: sum(e["records"] for e in {e["event_id"]: e for e in worker.created()}.values()) >= 600,
                 120, interval_s=2, what="every record in a file")
    finally:
        worker.stop()
    created = worker.created()
    assert "pressure" in {e["reason"] for e in created}
    # some window was cut into parts by the buffer, not by its records: a scan of the records
    # alone would put it into one part
    assert any(e["part"] > 0 for e in created), sorted((e["file_name"], e["reason"], e["records"]) for e in created)
    code, output = replay(worker, "--verify")
    assert code == 0, output
    code, output = replay(worker, "--out", str(tmp_path / "replayed"))
    assert code == 0, output
    assert _files(tmp_path / "replayed") == _files(worker.out)


def test_the_reader_reads_ahead_in_order_and_stops_with_its_caller(kafka_bootstrap, monkeypatch):
    """The read-ahead thread hands batches over in the broker's order, ends when the caller
    stops early (the consumer is then free for the next read), and raises in the caller what
    it met."""
    import threading
    import uuid

    from confluent_kafka import Producer

    from stream_app.replay.reader import PartitionRange, RangeReader
    from stream_app.tools.broker import create_topics

    topic = f"ahead-{uuid.uuid4().hex[:6]}"
    create_topics(kafka_bootstrap, {topic: 2})
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for i in range(3000):
        producer.produce(topic, b"%d" % i, partition=i % 2)
    producer.flush(30)
    reader = RangeReader({"bootstrap.servers": kafka_bootstrap}, batch_size=100)
    ranges = [PartitionRange(topic, 0, 0, 1500), PartitionRange(topic, 1, 0, 1500)]
    try:
        seen = [(raw.partition, raw.offset, raw.value) for batch in reader.read(ranges) for raw in batch]
        for partition in (0, 1):
            mine = [(offset, value) for p, offset, value in seen if p == partition]
            assert mine == [(o, b"%d" % (2 * o + partition)) for o in range(1500)]

        early = reader.read(ranges)
        next(early)
        early.close()  # the caller stops after one batch: the thread ends with it
        assert not [t for t in threading.enumerate() if t.name == "replay-read-ahead"]
        assert sum(len(batch) for batch in reader.read(ranges)) == 3000  # the consumer is free again

        def broken(ranges):
            yield from ()
            raise RuntimeError("fetch failed")

        monkeypatch.setattr(reader, "_batches", broken)
        with pytest.raises(RuntimeError, match="fetch failed"):
            list(reader.read(ranges))
    finally:
        reader.close()
