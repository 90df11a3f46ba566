"""The live worker as a real subprocess against a real broker: files, commits, journal, faults."""

from __future__ import annotations

import json
import os
import re
import signal
import time

import pytest

from tests.harness import LiveWorker, avro_values, readiness, wait_for, worker_past_first_files

pytestmark = pytest.mark.e2e
H = 3_600_000


def _records_in(created: list[dict]) -> int:
    return sum(e["records"] for e in {e["event_id"]: e for e in created}.values())


@pytest.mark.both_brokers(kafka3=True)
def test_files_match_the_core_and_offsets_commit_after_finalize(kafka_bootstrap, tmp_path):
    worker = LiveWorker(kafka_bootstrap, tmp_path, partitions=2, maxRecordsPerFile=25)
    values = avro_values(240, seed=11, span_hours=3.5)
    worker.produce(values)
    worker.start()
    try:
        wait_for(lambda: _records_in(worker.created()) + len(worker.dead_letters()) >= 240, 90,
                 what="all records in files")
        late = worker.dead_letters()
        assert all(d["reason"] == "LATE_RECORD" for d in late)
        wait_for(lambda: worker.committed() == {0: 120, 1: 120}, 30, what="commits at the end")
    finally:
        assert worker.stop() == 0
    files = worker.files()
    worker.assert_reference_files(tmp_path)  # live bytes == pure core bytes
    assert not list(worker.out.glob("*.tmp"))
    events = worker.journal()
    kinds = {e["event_type"] for e in events}
    assert {"opened", "closed", "created", "flush-summary"} <= kinds
    created = [e for e in events if e["event_type"] == "created"]
    assert sorted(e["file_name"] for e in created) == sorted(files)
    assert any(e["reason"] == "count" for e in created) and any(e["reason"] == "watermark" for e in created)
    for e in created:
        assert e["sha256"] and e["bytes"] == len(files[e["file_name"]]) and e["offsets"]
    manifest = (worker.out / "manifest.jsonl").read_text().splitlines()
    assert len(manifest) == len(files)


@pytest.mark.both_brokers
def test_an_input_topic_compressed_by_its_producers_gives_the_same_files(kafka_bootstrap, tmp_path):
    """Producers compress their batches (lz4 and zstd are common): every codec Kafka has, mixed
    in one topic, is read by the worker's client (aiokafka needs cramjam for all but gzip)."""
    worker = LiveWorker(kafka_bootstrap, tmp_path, partitions=2, maxRecordsPerFile=25)
    values = avro_values(160, seed=23, span_hours=3.5)
    for i, codec in enumerate(["lz4", "zstd", "snappy", "gzip"]):
        worker.produce(values[i * 40:(i + 1) * 40], compression=codec)
    worker.start()
    try:
        wait_for(lambda: _records_in(worker.created()) + len(worker.dead_letters()) >= 160, 90,
                 what="all records in files")
        wait_for(lambda: worker.committed() == {0: 80, 1: 80}, 30, what="commits at the end")
    finally:
        assert worker.stop() == 0
    worker.assert_reference_files(tmp_path)  # the bytes the pure core gives for the same records
    assert all(d["reason"] == "LATE_RECORD" for d in worker.dead_letters())


def test_commit_never_passes_unfinalized_records_of_interleaved_windows(kafka_bootstrap, tmp_path):
    worker = LiveWorker(kafka_bootstrap, tmp_path, maxRecordsPerFile=5,
                        window={"sizeMs": H, "graceMs": 100 * H, "idleTimeoutMs": 600_000})
    from datetime import timedelta

    from stream_app.codecs.avro import encode_confluent
    from stream_app.tools.demo import matched_records
    from tests.harness import SCHEMA

    base = list(matched_records(10, seed=5, span_hours=0.1))

    def at(rec, hours):
        return encode_confluent(1, SCHEMA, {**rec, "matched_at": rec["matched_at"] + timedelta(hours=hours)})

    # offset 0: window A; offsets 1-5: window B (fills a part); A stays open.
    worker.produce([at(base[0], 0)] + [at(r, 1) for r in base[1:6]])
    worker.start()
    try:
        wait_for(lambda: len(worker.files()) == 1, 60, what="window B's file")
        for _ in range(6):  # several commit intervals: the commit must not pass offset 0
            assert worker.committed()[0] in (0, -1001)
            time.sleep(0.5)
        worker.produce([at(r, 0) for r in base[6:10]])  # window A reaches 5 records
        wait_for(lambda: len(worker.files()) == 2, 60, what="window A's file")
        wait_for(lambda: worker.committed()[0] == 10, 30, what="commit after A is finalized")
    finally:
        worker.stop()
    created = worker.created()
    assert sorted(tuple((o["first"], o["last"]) for o in e["offsets"]) for e in created) == [
        ((0, 0), (6, 9)), ((1, 5),)]


def test_flush_by_time_cuts_a_part_before_the_window_closes(kafka_bootstrap, tmp_path):
    worker = LiveWorker(kafka_bootstrap, tmp_path, flushIntervalMs=800,
                        window={"sizeMs": H, "graceMs": 100 * H, "idleTimeoutMs": 600_000})
    worker.produce(avro_values(3, span_hours=0.1))
    worker.start()
    try:
        (event,) = wait_for(worker.created, 60, what="an interval cut")
        assert event["reason"] == "interval" and event["records"] == 3
        wait_for(lambda: worker.committed()[0] == 3, 30, what="commit after the interval cut")
    finally:
        worker.stop()


def test_write_failure_keeps_the_batch_and_retries_until_the_sink_recovers(kafka_bootstrap, tmp_path):
    worker = LiveWorker(kafka_bootstrap, tmp_path, maxRecordsPerFile=4, writeRetryInitialMs=200,
                        writeRetryMaxMs=1000, window={"sizeMs": H, "graceMs": 100 * H, "idleTimeoutMs": 600_000})
    values = avro_values(8, span_hours=0.1)
    worker.produce(values[:4])
    worker.start()
    try:
        wait_for(lambda: worker.committed()[0] == 4, 60, what="first file committed")
        moved = worker.out.with_name("out-moved")
        worker.out.rename(moved)  # the target directory disappears: writes fail with ENOENT
        worker.produce(values[4:])
        failures = wait_for(lambda: [e for e in worker.journal() if e["event_type"] == "write-failed"][1:], 60,
                            what="two write-failed events")
        assert failures[0]["error_class"] == "ENOENT" and failures[0]["attempt"] >= 1
        assert worker.committed()[0] == 4  # nothing past the failed file is committed
        moved.rename(worker.out)
        wait_for(lambda: worker.committed()[0] == 8, 60, what="commit after recovery")
    finally:
        worker.stop()
    assert len(worker.assert_reference_files(tmp_path)) == 2
    assert not list(worker.out.glob("*.tmp"))


def test_poison_avro_goes_to_the_dead_letter_topic_and_the_partition_keeps_flowing(kafka_bootstrap, tmp_path):
    worker = LiveWorker(kafka_bootstrap, tmp_path, maxRecordsPerFile=3,
                        window={"sizeMs": H, "graceMs": 100 * H, "idleTimeoutMs": 600_000})
    good = avro_values(3, span_hours=0.1)
    poison = [b"\x07not avro at all", good[0][:20], b"\x00\x00\x00\x00\x63" + good[0][5:]]
    worker.produce([good[0], poison[0], good[1], poison[1], poison[2], good[2]])
    worker.start()
    try:
        dead = worker.dead_letters(expect=3)
        wait_for(lambda: worker.committed()[0] == 6, 60, what="commit past the poison records")
    finally:
        worker.stop()
    assert [(d["source_offset"], d["reason"]) for d in dead] == [
        (1, "BAD_MAGIC_BYTE"), (3, "AVRO_DECODE_ERROR"), (4, "UNKNOWN_SCHEMA_ID")]
    assert [d["original_value"] for d in dead] == poison
    assert all(d["source_topic"] == worker.topic and d["source_partition"] == 0 for d in dead)
    assert len(worker.files()) == 1


def test_poison_json_goes_to_the_dead_letter_topic(kafka_bootstrap, tmp_path):
    worker = LiveWorker(kafka_bootstrap, tmp_path, input_format="json", maxRecordsPerFile=2,
                        window={"sizeMs": H, "graceMs": 100 * H, "idleTimeoutMs": 600_000})
    ok = b'{"record_id": "r1", "matched_at": "2026-03-02T01:00:00Z", "amount": "10.00", "currency": "EUR"}'
    ok2 = b'{"record_id": "r2", "matched_at": "2026-03-02T01:30:00Z", "amount": "0.10", "currency": "EUR"}'
    worker.produce([ok, b"{broken", b"[1,2,3]", b'{"record_id": "r3", "amount": "1.00"}', ok2])
    worker.start()
    try:
        dead = worker.dead_letters(expect=3)
        wait_for(lambda: worker.committed()[0] == 5, 60, what="commit past the poison records")
    finally:
        worker.stop()
    assert [d["reason"] for d in dead] == ["JSON_DECODE_ERROR", "NOT_AN_OBJECT", "MISSING_EVENT_TIME"]
    (body,) = worker.files().values()
    assert b"D|1|r1|10.00|EUR\nD|2|r2|0.10|EUR\n" in body and b"T|2|EUR=10.10\n" in body


def test_a_dead_letter_too_large_for_its_topic_goes_without_its_value(kafka_bootstrap, tmp_path):
    """A record near the input's size limit that must be dead-lettered: no crash loop, the
    partition goes on (issue: the envelope exceeded the producer's request limit)."""
    worker = LiveWorker(kafka_bootstrap, tmp_path, input_format="json", maxRecordsPerFile=2,
                        window={"sizeMs": H, "graceMs": 100 * H, "idleTimeoutMs": 600_000})
    worker.config_data["kafka"]["maxMessageBytes"] = 20_000
    from tests.helpers import write_config

    write_config(worker.config_path, worker.config_data)
    ok = b'{"record_id": "r1", "matched_at": "2026-03-02T01:00:00Z", "amount": "10.00", "currency": "EUR"}'
    ok2 = b'{"record_id": "r2", "matched_at": "2026-03-02T01:30:00Z", "amount": "0.10", "currency": "EUR"}'
    huge = b"{" + b"x" * 40_000  # not JSON, and its envelope would not fit
    worker.produce([ok, huge, ok2])
    worker.start()
    try:
        (dead,) = worker.dead_letters(expect=1)
        wait_for(lambda: worker.committed()[0] == 3, 60, what="commit past the huge record")
        assert worker.proc.poll() is None
    finally:
        worker.stop()
    assert dead["reason"] == "JSON_DECODE_ERROR" and dead["original_value"] is None and dead["source_offset"] == 1
    assert "original value withheld: 40001 bytes" in dead["detail"]
    (body,) = worker.files().values()
    assert b"D|1|r1|10.00|EUR\nD|2|r2|0.10|EUR\n" in body


@pytest.mark.parametrize("streaming, records, per_file", [(False, 600, 20), (True, 500, 40)],
                         ids=["buffered", "streaming"])
def test_restart_after_sigkill_resumes_without_duplicates(kafka_bootstrap, tmp_path, streaming, records, per_file):
    worker = LiveWorker(kafka_bootstrap, tmp_path, partitions=2, maxRecordsPerFile=per_file,
                        streamingAppendEnabled=streaming, spool_dir=tmp_path / "spool",
                        window={"sizeMs": H, "graceMs": 10 * 60_000, "idleTimeoutMs": 5000})
    # everything is produced up front: a partition that caught up early would otherwise close its
    # windows by idleness, a wall-clock decision the offline reference cannot know about
    worker.produce(avro_values(records, seed=23 if not streaming else 29, span_hours=6 if not streaming else 5))
    worker.start()
    try:
        wait_for(lambda: len(worker.files()) >= (2 if streaming else 3), 60, what="some files before the crash")
        if streaming:
            assert list((tmp_path / "spool").rglob("*.spool"))  # open parts live on disk
        worker.kill()
        worker.start()
        wait_for(lambda: _records_in(worker.created()) + len(worker.dead_letters()) >= records, 120,
                 what="all records after restart")
        wait_for(lambda: worker.committed() == {0: records // 2, 1: records // 2}, 30, what="final commits")
    finally:
        worker.stop()
    worker.assert_reference_files(tmp_path)  # the buffered (non-streaming) core's bytes
    assert not list(worker.out.glob("*.tmp")) and not list((tmp_path / "spool").rglob("*.spool"))
    ids_by_name: dict[str, set] = {}
    for e in worker.created():
        ids_by_name.setdefault(e["file_name"], set()).add(e["event_id"])
    assert all(len(ids) == 1 for ids in ids_by_name.values())  # a repeat carries the same id


def test_a_second_replica_takes_partitions_over_while_files_are_written(kafka_bootstrap, tmp_path):
    """Scaling out mid-run.  The first replica's writes are slowed down so that the rebalance finds
    one under way: the partition moves only after that write is done.  Each replica writes to its
    own volume; together they hold exactly the reference files."""
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    records = 20_000
    first = LiveWorker(kafka_bootstrap, tmp_path / "a", partitions=4, maxRecordsPerFile=250,
                       streamingAppendEnabled=True, spool_dir=tmp_path / "a" / "spool",
                       window={"sizeMs": H, "graceMs": 10 * 60_000, "idleTimeoutMs": 5000})
    second = first.replica(tmp_path / "b")
    first.produce(avro_values(records, seed=31, span_hours=6))
    first.start(env={"STREAM_APP_FAILPOINTS": "sink.write=delay@300"})
    try:
        first.wait_for(lambda: len(first.files()) >= 2, 90, what="the first replica's first files")
        second.start()
        first.wait_for(lambda: sum(first.committed().values()) == records, 240, what="every record committed")
        assert first.proc.poll() is None and second.proc.poll() is None
    finally:
        first.stop()
        second.stop()
    a, b = first.files(), second.files()
    assert a and b  # both replicas wrote files: the second one took partitions over
    assert not set(a) & set(b), f"in both volumes: {sorted(set(a) & set(b))}"
    assert {**a, **b} == first.reference_files(tmp_path)
    for replica in (first, second):
        assert "Traceback" not in replica.log.read_text()
        assert not list(replica.out.glob("*.tmp")) and not list(replica.out.parent.joinpath("spool").rglob("*.spool"))
    ids: dict[str, set] = {}
    for event in first.created():
        ids.setdefault(event["file_name"], set()).add(event["event_id"])
    assert all(len(v) == 1 for v in ids.values()) and set(ids) == set(a) | set(b)


@pytest.mark.both_brokers
def test_a_frozen_replica_that_lost_its_partitions_puts_no_file_in_place(kafka_bootstrap, tmp_path):
    """A zombie: the first replica freezes (SIGSTOP) in the middle of a write, the group drops it
    after its session timeout and the second replica writes everything it had not committed.
    When the first one wakes, the broker refuses its ownership check: the file it was writing is
    not put in place, so no file name is in both volumes."""
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    first = LiveWorker(kafka_bootstrap, tmp_path / "a", partitions=2, maxRecordsPerFile=100,
                       window={"sizeMs": H, "graceMs": 10 * 60_000, "idleTimeoutMs": 5000})
    second = first.replica(tmp_path / "b")
    first.produce(avro_values(2_000, seed=41, span_hours=6))
    reference = first.reference_files(tmp_path)
    first.start(env={"STREAM_APP_FAILPOINTS": "sink.write=delay@1500"})
    frozen = False
    try:
        first.wait_for(lambda: len(first.files()) >= 1, 90, what="the first replica's first file")
        time.sleep(0.5)  # inside the next file's write
        os.killpg(first.proc.pid, signal.SIGSTOP)
        frozen = True
        second.start()
        second.wait_for(lambda: set(first.files()) | set(second.files()) >= set(reference), 180, interval_s=1,
                        what="the second replica writing what the first had not committed")
        os.killpg(first.proc.pid, signal.SIGCONT)
        frozen = False
        first.wait_for(lambda: first.log_count("is no longer this worker's"), 60, what="the refused write")
        time.sleep(3)
        assert first.proc.poll() is None and second.proc.poll() is None
    finally:
        if frozen:
            os.killpg(first.proc.pid, signal.SIGCONT)
        first.stop()
        second.stop()
    a, b = first.files(), second.files()
    assert not set(a) & set(b), f"in both volumes: {sorted(set(a) & set(b))}"
    assert {**a, **b} == reference
    assert not list(first.out.glob("*.tmp"))


def test_pressure_cut_opt_in_bounds_buffered_records_and_everything_is_still_written(kafka_bootstrap, tmp_path):
    worker = LiveWorker(kafka_bootstrap, tmp_path, maxRecordsPerFile=5, maxBufferedRecords=5, pressureCut=True,
                        window={"sizeMs": H, "graceMs": 100 * H, "idleTimeoutMs": 600_000})
    from datetime import timedelta

    from stream_app.codecs.avro import encode_confluent
    from stream_app.tools.demo import matched_records
    from tests.harness import SCHEMA

    base = list(matched_records(12, seed=9, span_hours=0.1))
    # three windows interleaved record by record: none fills a part (4 < 5), none closes by
    # watermark, so only pressure relief can bring the 12 buffered records under the limit
    worker.produce([encode_confluent(1, SCHEMA, {**r, "matched_at": r["matched_at"] + timedelta(hours=i % 3)})
                    for i, r in enumerate(base)])
    worker.start()
    try:
        created = wait_for(lambda: [e for e in worker.created() if e["reason"] == "pressure"][1:] and worker.created(),
                           60, what="two pressure cuts")
        written = {off for e in created for o in e["offsets"] for off in range(o["first"], o["last"] + 1)}
        open_offsets = set(range(12)) - written
        assert len(open_offsets) == 4  # one window stays open, below the limit
        # the commit may not pass the open window's first record (no commit at all when that is 0)
        expected = {min(open_offsets), -1001} if min(open_offsets) == 0 else {min(open_offsets)}
        wait_for(lambda: worker.committed()[0] in expected, 30, what="commit up to the open window")
        time.sleep(1.0)
        assert worker.committed()[0] in expected
    finally:
        worker.stop()


@pytest.mark.parametrize("error", ["ENOSPC", "EIO", "EACCES"])
def test_injected_sink_errors_back_off_and_recover_with_identical_output(kafka_bootstrap, tmp_path, error):
    worker = LiveWorker(kafka_bootstrap, tmp_path, maxRecordsPerFile=10, writeRetryInitialMs=100,
                        writeRetryMaxMs=400, window={"sizeMs": H, "graceMs": 100 * H, "idleTimeoutMs": 600_000})
    worker.produce(avro_values(20, span_hours=0.2))
    worker.start(env={"STREAM_APP_FAILPOINTS": f"sink.write={error}*3"})
    try:
        wait_for(lambda: worker.committed()[0] == 20, 60, what="recovery after the injected errors")
    finally:
        worker.stop()
    failed = [e for e in worker.journal() if e["event_type"] == "write-failed"]
    assert [e["error_class"] for e in failed] == [error] * 3 and sorted(e["attempt"] for e in failed)[-1] >= 1
    assert len(worker.assert_reference_files(tmp_path)) == 2


def test_worker_waits_for_an_unreachable_broker_without_crashing(tmp_path):
    from stream_app.tools.broker import EmbeddedBroker, create_topics, free_port
    from stream_app.tools.demo import spawn_worker, stop_worker
    from stream_app.tools.topics import produce
    from tests.helpers import config_dict, write_config

    port, web = free_port(), free_port()
    out = tmp_path / "out"
    out.mkdir()
    data = config_dict(out, bootstrap=f"127.0.0.1:{port}", topic="late-broker", maxRecordsPerFile=5,
                       window={"sizeMs": H, "graceMs": 100 * H, "idleTimeoutMs": 600_000})
    data["appId"], data["webPort"], data["webHost"] = "late-broker-app", web, "127.0.0.1"
    data["kafka"]["confirmChangelogEnds"] = True  # the embedded broker, started below
    config = write_config(tmp_path / "c.yaml", data)
    proc = spawn_worker(str(config), str(tmp_path / "worker.log"))
    broker = EmbeddedBroker(port=port)
    try:
        status, body = wait_for(lambda: readiness(web), 30, what="the probe endpoint while waiting")
        assert status == 503 and "broker unreachable" in body["reason"]
        time.sleep(3)
        assert proc.poll() is None  # still waiting, not crashed
        broker.start()
        create_topics(broker.bootstrap, {"late-broker": 1, "clearing-journal": 1, "clearing-dead-letter": 1})
        produce(broker.bootstrap, "late-broker", [(0, None, v) for v in avro_values(5, span_hours=0.1)])
        wait_for(lambda: list(out.glob("F_*")), 90, what="a file once the broker is up")
    finally:
        stop_worker(proc)
        broker.stop()
    log = (tmp_path / "worker.log").read_text()
    assert "broker unreachable" in log and "Traceback" not in log.split("reachable; starting")[0]


def _peak_rss_mb(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_rss_stays_bounded_under_a_producer_flood(kafka_bootstrap, tmp_path):
    worker = LiveWorker(kafka_bootstrap, tmp_path, partitions=2, maxRecordsPerFile=1000, maxBufferedRecords=2000,
                        window={"sizeMs": H, "graceMs": 10 * 60_000, "idleTimeoutMs": 600_000})
    rounds = [avro_values(30_000, seed=51 + i, span_hours=4, start_hours=4 * i) for i in range(3)]
    worker.start()
    peaks = []
    try:
        done = 0
        for values in rounds:
            worker.produce(values)
            done += len(values)
            wait_for(lambda done=done: sum(worker.committed().values()) >= done - 4000, 180, interval_s=2,
                     what="the flood to be absorbed")
            peaks.append(_peak_rss_mb(worker.proc.pid))
    finally:
        worker.stop()
    # three times the records, bounded memory: the peak after the third flood is within 25 % of the first
    assert peaks[2] <= peaks[0] * 1.25, peaks


def test_prometheus_metrics_and_probes(kafka_bootstrap, tmp_path):
    import urllib.request

    worker = LiveWorker(kafka_bootstrap, tmp_path, maxRecordsPerFile=3,
                        window={"sizeMs": H, "graceMs": 100 * H, "idleTimeoutMs": 600_000})
    worker.enable_web()
    good = avro_values(6, span_hours=0.1)
    worker.produce(good[:3] + [b"\x09poison"] + good[3:])
    worker.start()
    try:
        wait_for(lambda: worker.committed()[0] == 7, 60, what="files and commits")
        time.sleep(1)  # a timer tick updates the gauges
        with urllib.request.urlopen(f"http://127.0.0.1:{worker.web_port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        with urllib.request.urlopen(f"http://127.0.0.1:{worker.web_port}/healthz", timeout=5) as resp:
            assert resp.status == 200
        assert worker.readiness()[0] == 200
        # Faust's own views: table contents, the cluster map, statistics, graph, its index page
        for path in ("/table/", "/table/business-windows/", "/router/", "/graph/", "/stats/", "/assignment/",
                     "/performance/", "/", "/no-such-page"):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{worker.web_port}{path}", timeout=5)
                raise AssertionError(f"{path} is served")
            except urllib.error.HTTPError as exc:
                assert exc.code == 404, (path, exc.code)
    finally:
        worker.stop()
    assert f'stream_app_records_consumed_total{{partition="0",topic="{worker.topic}"}} 7.0' in text
    assert 'stream_app_files_finalized_total{mode="template",reason="count"} 2.0' in text
    assert 'stream_app_dead_letters_total{reason="BAD_MAGIC_BYTE"} 1.0' in text
    assert "stream_app_records_per_file_count 2.0" in text and "stream_app_finalize_seconds_count 2.0" in text
    assert "stream_app_uncommitted_records 0.0" in text and "stream_app_open_windows 1.0" in text  # not closed yet
    assert f'stream_app_consumer_lag{{partition="0",stage="partition",topic="{worker.topic}"}} 0.0' in text
    for value in (b"poison", b"EUR"):
        assert value.decode() not in text  # no record data in labels
    assert "stream_app_ready 1.0" in text or "stream_app_ready 0.0" in text
    # the chart's dashboard and alerts use only metrics this /metrics serves
    from tests.deploy.test_deploy import render, used_metrics

    served = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M):
        served |= {name + s for s in ("_bucket", "_sum", "_count")} if kind == "histogram" else {name}
    m = render({"grafanaDashboard": {"enabled": True}, "prometheusRule": {"enabled": True}})
    used = used_metrics(json.dumps(m["PrometheusRule"]) + json.dumps(m["ConfigMap"]))
    assert used and used <= served, used - served


def test_switching_streaming_off_after_a_crash_is_deterministic(kafka_bootstrap, tmp_path):
    worker = LiveWorker(kafka_bootstrap, tmp_path, partitions=2, maxRecordsPerFile=40, streamingAppendEnabled=True,
                        spool_dir=tmp_path / "spool", window={"sizeMs": H, "graceMs": 10 * 60_000, "idleTimeoutMs": 5000})
    worker.produce(avro_values(400, seed=31, span_hours=5))
    worker.start()
    try:
        wait_for(lambda: len(worker.files()) >= 2, 60, what="some files in streaming mode")
        worker.kill()
        assert list((tmp_path / "spool").rglob("*.spool"))  # spools of the streaming run are left behind
        (worker.out / "LEFTOVER.txt.tmp").write_bytes(b"half a file")
        from tests.helpers import write_config

        worker.config_data["worker"]["streamingAppendEnabled"] = False  # a start-time setting
        write_config(worker.config_path, worker.config_data)
        worker.start()
        wait_for(lambda: sum(worker.committed().values()) == 400, 120, what="completion in buffered mode")
    finally:
        worker.stop()
    worker.assert_reference_files(tmp_path)
    assert not list(worker.out.glob("*.tmp")) and not list((tmp_path / "spool").rglob("*.spool"))


def test_hostile_json_is_dead_lettered_and_later_records_are_written_and_committed(kafka_bootstrap, tmp_path):
    """Duplicate keys, NaN, an amount beyond 38 digits and an event time days ahead of the
    partition: each a dead letter with its reason; exponent notation is written plainly; an
    amount sent as a JSON number of 20 digits is written as sent, never through a float; the
    good records after them are in the file and the partition commits to its end."""
    worker = LiveWorker(kafka_bootstrap, tmp_path, input_format="json", maxRecordsPerFile=4,
                        window={"sizeMs": H, "graceMs": 100 * H, "idleTimeoutMs": 600_000})
    def record(rid: str, at: str, amount: str) -> bytes:
        return (f'{{"record_id": "{rid}", "matched_at": "{at}", "amount": {amount}, "currency": "EUR"}}').encode()

    values = [
        record("r1", "2026-03-02T01:00:00Z", '"10.00"'),
        b'{"record_id": "x1", "matched_at": "2026-03-02T01:01:00Z", "amount": "1.00", "amount": "9.00", "currency": "EUR"}',
        record("x2", "2026-03-02T01:02:00Z", '"NaN"'),
        record("x3", "2026-03-02T01:03:00Z", '"' + "9" * 39 + '"'),
        record("x4", "2026-03-09T01:04:00Z", '"1.00"'),  # a week ahead of the partition
        record("r2", "2026-03-02T01:05:00Z", '"1E+3"'),
        record("r3", "2026-03-02T01:06:00Z", '"0.10"'),
        record("r4", "2026-03-02T01:07:00Z", "123456789012345678.99"),  # a JSON number: a double gives ...680
    ]
    worker.produce(values)
    worker.start()
    try:
        dead = worker.dead_letters(expect=4)
        wait_for(lambda: worker.committed()[0] == len(values), 60, what="commit past the hostile records")
    finally:
        worker.stop()
    assert [(d["source_offset"], d["reason"]) for d in dead] == [
        (1, "DUPLICATE_KEY"), (2, "BAD_DECIMAL"), (3, "BAD_DECIMAL"), (4, "EVENT_TIME_OUT_OF_RANGE")]
    assert all(b"9.00" not in d["detail"].encode() for d in dead)
    (body,) = worker.files().values()
    assert b"D|1|r1|10.00|EUR\nD|2|r2|1000.00|EUR\nD|3|r3|0.10|EUR\nD|4|r4|123456789012345678.99|EUR\n" in body
    assert b"T|4|EUR=123456789012346689.09\n" in body
    assert "Traceback" not in worker.log.read_text()


@pytest.mark.both_brokers
def test_committed_offsets_the_worker_never_made_are_reported_not_committed_over(kafka_bootstrap, tmp_path):
    """Offsets restored from elsewhere (or a cluster that lost the changelogs) put the group's
    commit above the checkpoints the worker's tables hold: it says so on /readyz."""
    from confluent_kafka import Consumer, TopicPartition

    worker, values = worker_past_first_files(kafka_bootstrap, tmp_path)
    worker.stop()
    worker.produce(values[20:])

    def foreign_commit() -> bool:  # a member of the group (the embedded broker refuses simple commits)
        foreign = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": worker.app_id, "log_level": 0,
                            "enable.auto.commit": False, "session.timeout.ms": 6000, "auto.offset.reset": "earliest"})
        try:
            foreign.subscribe([worker.topic])
            deadline = time.monotonic() + 20
            while not foreign.assignment() and time.monotonic() < deadline:
                foreign.poll(0.5)
            foreign.commit(offsets=[TopicPartition(worker.topic, 0, 30)], asynchronous=False)
            return True
        except Exception:
            return False
        finally:
            foreign.close()

    wait_for(foreign_commit, 90, interval_s=2, what="a commit from outside the worker")
    worker.start()
    try:
        status, body = wait_for(lambda: (lambda r: r if r and r[0] == 503 and "ahead" in r[1]["reason"] else None)(
            worker.readiness()), 60, what="the lost state reported")
    finally:
        worker.stop()
    assert f"{worker.topic}/0 committed 30, checkpoint 20" in body["reason"]
    assert "the cluster lost state" in worker.log.read_text()
