"""A live worker subprocess on its own topics, with helpers to observe it from outside."""

from __future__ import annotations

import copy
import json
import os
import re
import signal
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable
from datetime import timedelta
from pathlib import Path
from typing import Any

from stream_app.codecs.avro import encode_confluent, load_schema
from stream_app.config import parse_config
from stream_app.core.records import RawRecord
from stream_app.pipeline.files import FilePipeline
from stream_app.pipeline.journal import Journal
from stream_app.pipeline.memory import MemoryStateStore
from stream_app.pipeline.wiring import build_assembler, build_decoder, build_pipeline, build_routing, window_policy
from stream_app.replay.run import LoopbackSender, run_records, run_window_records
from stream_app.resources import AVRO_DIR
from stream_app.sinks.local import LocalSink
from stream_app.tools.broker import create_topics
from stream_app.tools.demo import DEMO_START, matched_records, spawn_worker, stop_worker
from stream_app.tools.topics import committed_offsets, produce, read_dead_letters, read_journal
from tests.helpers import CollectingPublisher, config_dict, write_config

SCHEMA = load_schema(AVRO_DIR / "matched_record.avsc")


def avro_values(count: int, seed: int = 7, span_hours: float = 5.0, start_hours: float = 0.0) -> list[bytes]:
    start = DEMO_START + timedelta(hours=start_hours)
    return [encode_confluent(1, SCHEMA, r) for r in matched_records(count, seed, span_hours, start)]


def readiness(port: int) -> tuple[int, dict] | None:
    """(status, body) of GET /readyz, or None while nothing answers on the port."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
    except OSError:
        return None


def wait_for(predicate: Callable[[], Any], timeout_s: float = 60.0, interval_s: float = 0.5, what: str = "") -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what or predicate}")
        time.sleep(interval_s)


def _stack_summary(dump: list[str]) -> list[str]:
    """One line per thread or task of a mode ``cry`` dump: its frames as ``file:line func``."""
    frame = re.compile(r'^\s+File "([^"]+)", line (\d+), in (\S+)')
    summary: list[str] = []
    title, frames = "", []
    for line in dump + ["THREAD end"]:
        if line.startswith(("THREAD ", "Stack for ")):
            if frames:
                summary.append(f"{title}: " + " > ".join(frames[-6:]))
            title, frames = line[:60], []
        elif match := frame.match(line):
            path, number, func = match.groups()
            frames.append(f"{'/'.join(path.split('/')[-2:])}:{number} {func}")
    return summary


class LiveWorker:
    def __init__(self, bootstrap: str, tmp_path: Path, partitions: int = 1, input_format: str = "avro",
                 spool_dir: Path | None = None, topic_config: dict[str, str] | None = None, **worker: Any) -> None:
        uid = uuid.uuid4().hex[:8]
        self.bootstrap = bootstrap
        self.partitions = partitions
        self.topic, self.journal_topic, self.dead_topic = f"in-{uid}", f"journal-{uid}", f"dead-{uid}"
        self.app_id = f"app-{uid}"
        self.out = tmp_path / "out"
        self.out.mkdir(exist_ok=True)
        self.log = tmp_path / "worker.log"
        data = config_dict(self.out, bootstrap=bootstrap, topic=self.topic, **worker)
        if data["worker"]["mode"] == "structured":
            for key in ("headerTemplate", "recordTemplate", "footerTemplate"):
                data["worker"].pop(key)
        data["appId"] = self.app_id
        data["kafka"].update(journalTopic=self.journal_topic, deadLetterTopic=self.dead_topic,
                             topicPartitions=partitions, commitIntervalMs=300)
        data["input"] = {"format": input_format}
        data["dataDir"] = str(tmp_path / "faust-data")
        if spool_dir is not None:
            data["spoolDir"] = str(spool_dir)
        self.config_data = data
        self.config_path = write_config(tmp_path / "worker.yaml", data)
        self.produced: list[RawRecord] = []
        self._next_offset = [0] * partitions
        self.proc = None
        self.web_port: int | None = None
        self.group: list[LiveWorker] = [self]  # every replica of this app: a failure shows them all
        create_topics(bootstrap, {self.topic: partitions}, config=topic_config)
        create_topics(bootstrap, {self.journal_topic: 1, self.dead_topic: 1})

    def replica(self, tmp_path: Path) -> LiveWorker:
        """Another replica of the same app (same group and topics) with its own volume and log,
        as the Helm chart runs it: target directory, spool and data directory per replica."""
        other = copy.copy(self)
        other.proc = None
        self.group.append(other)  # the same list: shared by every replica
        other.out = tmp_path / "out"
        other.out.mkdir(parents=True, exist_ok=True)
        other.log = tmp_path / "worker.log"
        data = copy.deepcopy(self.config_data)
        data["sink"]["localTargetDir"] = str(other.out)
        data["dataDir"] = str(tmp_path / "faust-data")
        if "spoolDir" in data:
            data["spoolDir"] = str(tmp_path / "spool")
        data["workerId"] = f"{data['workerId']}-{tmp_path.name}"
        other.config_data = data
        other.config_path = write_config(tmp_path / "worker.yaml", data)
        return other

    def enable_web(self) -> None:
        from stream_app.tools.broker import free_port

        self.web_port = free_port()
        self.config_data["webPort"] = self.web_port
        write_config(self.config_path, self.config_data)

    def readiness(self) -> tuple[int, dict] | None:
        assert self.web_port is not None
        return readiness(self.web_port)

    def start(self, env: dict[str, str] | None = None) -> LiveWorker:
        self.proc = spawn_worker(str(self.config_path), str(self.log), env)
        return self

    def stop(self) -> int:
        return stop_worker(self.proc) if self.proc else 0

    def log_count(self, text: str) -> int:
        """How many lines of the worker's log (all its runs) contain ``text``."""
        if not self.log.exists():
            return 0
        return sum(text in line for line in self.log.read_text(errors="replace").splitlines())

    def diagnosis(self, log_lines: int = 40) -> str:
        """What the worker was doing: alive or exit code, commits, the end of its log, and where
        each of its threads and asyncio tasks waits (frames only: no local variables).

        The log holds no record contents (only file names, counts and reasons), so it can be shown.
        """
        running = self.proc is not None and self.proc.poll() is None
        state = "not started" if self.proc is None else ("running" if running else f"exited with {self.proc.returncode}")
        lines = self.log.read_text(errors="replace").splitlines() if self.log.exists() else []
        stacks: list[str] = []
        if running:  # mode's worker dumps every thread's and task's stack on SIGUSR1
            os.kill(self.proc.pid, signal.SIGUSR1)
            time.sleep(2)
            dump = self.log.read_text(errors="replace").splitlines()[len(lines):]
            stacks = _stack_summary(dump)
        notable = [line for line in lines if "[WARNING]" in line or "[ERROR]" in line or "Traceback" in line]
        return "\n".join([f"worker {state}; committed {self.committed()}",
                          f"warnings/errors in the log ({len(notable)}, last 15):", *notable[-15:],
                          f"last {log_lines} log lines:", *lines[-log_lines:],
                          f"stacks ({len(stacks)}, innermost frame last):", *stacks])

    def wait_for(self, predicate: Callable[[], Any], timeout_s: float, interval_s: float = 0.5, what: str = "") -> Any:
        """``wait_for`` on a running worker: stops early if it exits, says what it was doing."""
        def met_while_alive() -> Any:
            value = predicate()
            if not value and self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"the worker exited while waiting for {what}")
            return value

        try:
            return wait_for(met_while_alive, timeout_s, interval_s, what)
        except AssertionError as exc:
            others = [f"replica {other.log.parent.name}: {other.diagnosis()}"
                      for other in self.group if other is not self and other.proc is not None]
            raise AssertionError("\n".join([str(exc), self.diagnosis(), *others])) from None

    def die_at(self, point: str, timeout_s: float = 120) -> None:
        """Run until the failpoint ``point`` (``NAME=crash@N``) kills the worker by itself."""
        import subprocess

        self.start(env={"STREAM_APP_FAILPOINTS": point})
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"failpoint {point} was never reached") from None
        if self.proc.returncode != 137:
            raise AssertionError(f"{point}: the worker exited with {self.proc.returncode}\n{self.diagnosis()}")

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def produce(self, values: Iterable[bytes | tuple[int, bytes]], headers: Any = None,
                compression: str = "none") -> None:
        batch = []
        for i, item in enumerate(values):
            partition, value = item if isinstance(item, tuple) else (i % self.partitions, item)
            batch.append((partition, None, value))
            self.produced.append(RawRecord(self.topic, partition, self._next_offset[partition], None, None, value))
            self._next_offset[partition] += 1
        produce(self.bootstrap, self.topic, batch, compression)

    def journal(self) -> list[dict]:
        return read_journal(self.bootstrap, self.journal_topic, timeout_s=15)

    def created(self) -> list[dict]:
        return [e for e in self.journal() if e["event_type"] == "created"]

    def dead_letters(self, expect: int | None = None) -> list[dict]:
        """Dead letters: at least ``expect`` of them (waiting up to 30 s), or all there are now."""
        return read_dead_letters(self.bootstrap, self.dead_topic, expect=expect, timeout_s=30)

    def committed(self) -> dict[int, int]:
        return committed_offsets(self.bootstrap, self.app_id, self.topic, self.partitions)

    def files(self) -> dict[str, bytes]:
        """Finished files only: a ``.tmp`` is a write in flight and may be renamed while we list
        (tests that care assert separately that none is left behind)."""
        return {p.name: p.read_bytes() for p in sorted(self.out.iterdir())
                if p.name != "manifest.jsonl" and p.suffix != ".tmp"}

    def assert_reference_files(self, tmp_path: Path, reference: dict[str, bytes] | None = None,
                               files: dict[str, bytes] | None = None) -> dict[str, bytes]:
        """The worker's files (or ``files``) equal the pure core's (or ``reference``); on a
        mismatch, say how (never a byte dump)."""
        files = self.files() if files is None else files
        reference = self.reference_files(tmp_path) if reference is None else reference
        if files == reference:
            return files
        differ = sorted(n for n in set(files) & set(reference) if files[n] != reference[n])
        created = {e["file_name"]: e for e in self.created()}
        lines = [f"{len(files)} files, {len(reference)} expected",
                 f"missing: {sorted(set(reference) - set(files))}",
                 f"extra: {sorted(set(files) - set(reference))}"]
        for name in differ + sorted(set(files) - set(reference)):
            event = created.get(name, {})
            got, want = files[name].count(b"\n"), reference.get(name, b"").count(b"\n")
            lines.append(f"{name}: {got} lines vs {want}, cut by {event.get('reason')}, offsets {event.get('offsets')}")
        reasons: dict[str, int] = {}
        for letter in self.dead_letters():
            reasons[letter["reason"]] = reasons.get(letter["reason"], 0) + 1
        lines.append(f"dead letters: {reasons}")
        raise AssertionError("files differ from the reference:\n" + "\n".join(lines))

    def reference_files(self, tmp_path: Path) -> dict[str, bytes]:
        """What the pure core makes of everything produced (the offline/replay path)."""
        out = tmp_path / "reference"
        out.mkdir(exist_ok=True)
        settings = parse_config(self.config_data)
        produced = sorted(self.produced, key=lambda r: (r.partition, r.offset))
        if settings.worker.fileScope == "window":
            settings = settings.model_copy(update={"input": settings.input.model_copy(update={"decodeProcess": False})})
            publisher, sender = CollectingPublisher(), LoopbackSender(settings.repartition_topic)
            routing = build_routing(settings, MemoryStateStore(), publisher, sender)
            files = build_pipeline(settings, MemoryStateStore(), publisher, sink=LocalSink(out, manifest=False))
            run_window_records(routing, files, sender, settings.input_partitions, produced)
        else:
            pipeline = FilePipeline(window_policy(settings), settings.worker.group_specs, build_decoder(settings),
                                    build_assembler(settings), LocalSink(out, manifest=False), MemoryStateStore(),
                                    CollectingPublisher(), Journal("reference"))
            run_records(pipeline, produced)
        return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def worker_past_first_files(bootstrap: str, tmp_path: Path) -> tuple[LiveWorker, list[bytes]]:
    """A running worker (web probes on) that has written and committed the files of the first
    20 of 40 records (one partition, 10 per file, one long window) and is ready; the other 20
    are not produced yet.  The caller stops it."""
    hour = 3_600_000
    worker = LiveWorker(bootstrap, tmp_path, maxRecordsPerFile=10,
                        window={"sizeMs": hour, "graceMs": 100 * hour, "idleTimeoutMs": 600_000})
    worker.enable_web()
    values = avro_values(40, span_hours=0.3)
    worker.produce(values[:20])
    worker.start()
    try:
        wait_for(lambda: worker.committed()[0] == 20, 60, what="the first files")
        assert wait_for(lambda: worker.readiness(), 20)[0] == 200
    except BaseException:
        worker.stop()
        raise
    return worker, values
