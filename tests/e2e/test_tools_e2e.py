"""The operator tools against a real worker: journal, dead letters, re-drive; two apps on one
journal topic never share an event id."""

from __future__ import annotations

import json
import time

import pytest
from click.testing import CliRunner

from stream_app.cli import main
from tests.harness import LiveWorker, avro_values, wait_for

pytestmark = pytest.mark.e2e
H = 3_600_000


def run(worker: LiveWorker, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, [args[0], "--config", str(worker.config_path), *args[1:]])
    return result.exit_code, result.output


def records_in_files(worker: LiveWorker) -> int:
    return sum(e["records"] for e in {e["event_id"]: e for e in worker.created()}.values())


@pytest.mark.both_brokers(kafka3=True)
def test_journal_dead_letters_and_a_redrive_round_trip(kafka_bootstrap, tmp_path):
    worker = LiveWorker(kafka_bootstrap, tmp_path, maxRecordsPerFile=1000,
                        window={"sizeMs": H, "graceMs": 0, "idleTimeoutMs": 1500})
    on_time = avro_values(60, seed=3, span_hours=2.5)
    late = avro_values(4, seed=4, span_hours=0.5)  # hour 0, after the watermark passed it
    worker.produce(on_time + late + [b"\x07poison"])
    worker.start()
    try:
        wait_for(lambda: worker.committed()[0] == 65, 60, what="every record in a file or dead-lettered")
        letters = worker.dead_letters(expect=5)
        late_sources = {(d["source_partition"], d["source_offset"]) for d in letters if d["reason"] == "LATE_RECORD"}
        assert len(late_sources) >= 4 and records_in_files(worker) == 64 - len(late_sources)

        code, output = run(worker, "dead-letters")
        assert code == 0, output
        assert f"{len(late_sources):>8}  LATE_RECORD" in output and "       1  BAD_MAGIC_BYTE" in output
        code, output = run(worker, "dead-letters", "--reason", "LATE_RECORD", "--list")
        rows = [json.loads(line) for line in output.splitlines()]
        assert code == 0 and len(rows) >= len(late_sources)
        assert all(r["reason"] == "LATE_RECORD" and r["value_bytes"] and "value" not in r for r in rows)
        code, output = run(worker, "dead-letters", "--list", "--show-values")
        assert code == 64 and "only to a terminal" in output

        code, output = run(worker, "dead-letters", "--reason", "LATE_RECORD", "--redrive")
        assert code == 0 and f"re-drove {len(late_sources)} dead letter(s)" in output, output
        code, output = run(worker, "dead-letters", "--reason", "LATE_RECORD", "--redrive")
        assert code == 0 and "re-drove 0 dead letter(s)" in output, output  # each once
        # a dead letter written again later (a worker that re-read its partition) is not sent again
        from stream_app.tools.topics import decode_dead_letter, produce, read_topic

        copy = next(m.value() for m in read_topic(worker.bootstrap, worker.dead_topic)
                    if decode_dead_letter(m.value())["reason"] == "LATE_RECORD")
        produce(worker.bootstrap, worker.dead_topic, [(0, None, copy)])
        code, output = run(worker, "dead-letters", "--reason", "LATE_RECORD", "--redrive")
        assert code == 0 and "re-drove 0 dead letter(s); 1 passed over" in output, output
        # the re-driven late records go into the current window: every record in exactly one file
        wait_for(lambda: records_in_files(worker) >= 64, 60, what="the re-driven records in a file")
        time.sleep(2)
        assert records_in_files(worker) == 64  # each record in exactly one file
        assert len(worker.dead_letters()) == len(letters) + 1  # none dead-lettered again (+ the copy)
        assert all(d["event_id"] for d in letters)

        code, output = run(worker, "journal", "--type", "created")
        created = [json.loads(line) for line in output.splitlines()]
        assert code == 0 and created and all(e["event_type"] == "created" for e in created)
        assert sum(e["records"] for e in {e["event_id"]: e for e in created}.values()) == 64
        code, output = run(worker, "journal", "--summary")
        summary = [json.loads(line) for line in output.splitlines()]
        assert code == 0 and sum(r["records"] for r in summary) == 64
        assert {r["file_key"] for r in summary} == {e["file_key"] for e in created}
        window = created[0]["window_start"]
        code, output = run(worker, "journal", "--window", window)
        assert code == 0 and all(json.loads(line)["window_start"] == window for line in output.splitlines())
        _follow_reads_on(worker, len(created))
    finally:
        worker.stop()
    assert sum(1 for _ in worker.files()) >= 3


def _follow_reads_on(worker: LiveWorker, existing: int) -> None:
    """--follow prints what is there and keeps reading: it does not stop at the end of the topic."""
    import subprocess
    import sys
    import threading

    proc = subprocess.Popen([sys.executable, "-m", "stream_app.cli", "journal", "--config", str(worker.config_path),
                             "--type", "created", "--follow"], stdout=subprocess.PIPE, text=True)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True).start()  # type: ignore[union-attr]
    try:
        wait_for(lambda: len(lines) >= existing, 30, what="the followed events")
        assert len(lines) == existing and all(json.loads(line)["event_type"] == "created" for line in lines)
        time.sleep(3)
        assert proc.poll() is None  # still following after the end of the topic
    finally:
        proc.terminate()
        proc.wait(10)


def test_two_apps_on_one_journal_topic_never_share_an_event_id(kafka_bootstrap, tmp_path):
    from tests.helpers import write_config

    workers = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        workers.append(LiveWorker(kafka_bootstrap, tmp_path / name, maxRecordsPerFile=10,
                                  window={"sizeMs": H, "graceMs": 0, "idleTimeoutMs": 1000}))
    first, second = workers
    # two apps (consumer groups) on one input topic and one journal topic, as with the defaults
    second.topic, second.journal_topic = first.topic, first.journal_topic
    second.config_data["kafka"].update(inputTopics=[first.topic], journalTopic=first.journal_topic)
    write_config(second.config_path, second.config_data)
    first.produce(avro_values(40, seed=9, span_hours=1.5))  # the same file keys and parts in both apps
    for worker in workers:
        worker.start()
    try:
        for worker in workers:
            wait_for(lambda w=worker: w.committed()[0] == 40, 60, what="both apps done")
    finally:
        for worker in workers:
            worker.stop()
    created = [e for e in first.journal() if e["event_type"] == "created"]
    ids: dict[tuple, set[str]] = {}
    for event in created:
        ids.setdefault((event["file_key"], event["part"]), set()).add(event["event_id"])
    assert len(ids) >= 4 and all(len(found) == 2 for found in ids.values()), ids  # one id per app
