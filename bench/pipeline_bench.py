"""One benchmark, one run: every path against the raw client on the same broker and records.

Produces N realistic matched records (Avro) into a topic with several partitions on the embedded
broker (or KAFKA_BOOTSTRAP_SERVERS), then measures records/s from the first record read to the
last file finalized (and committed, for the live worker; its start-up and group join are shown
apart) for:

  a  raw confluent-kafka batch read + fastavro decode (the ceiling)
  b  the live worker, template mode
  c  the live worker, structured mode (pcs-clearing XML pack)
  d  stream-app replay of the same range
  e  streaming append peak RSS for 10k / 100k / 1M records in one window (bench/streaming_rss.py)
  f g h  b c d in window scope (business files)
  i  f as a backlog whose open windows exceed maxBufferedRecords (20,000): windows move to disk

Prints a table (records/s, ratio to a, MB/s, peak RSS, and CPU microseconds per record of the
path's processes and of the broker, with the ratio to a that this CPU allows on the machine's
cores at best) and writes pipeline.json to bench/results/ (or --results DIR).

    python bench/pipeline_bench.py [--records 1000000] [--partitions 4] [--skip-rss] [--paths bcd] [--streaming]
                                   [--workers 2]  (f and g with two workers in one group)
                                    [--decode-in-worker] [--xsd-in-worker] [--broker embedded|apache]

--broker apache runs every path against Apache Kafka (tests/apache_kafka.py: a KRaft broker from
the Maven Central jars, needs java and mvn) instead of the embedded broker; its JVM's CPU is
the broker column.

The raw ceiling is read again after every path, and each path's ratio uses the raw reads just
before and after it: on a shared machine the raw rate drifts between runs.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"

from stream_app.ops.hotpath import describe  # noqa: E402
from stream_app.tools.broker import EmbeddedBroker, create_topics  # noqa: E402
from stream_app.tools.demo import encoded_matched_records, spawn_worker, stop_worker  # noqa: E402
from stream_app.tools.topics import produce, read_journal  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from procstats import cpu_seconds, peak_rss_mb  # noqa: E402

CORES = len(os.sched_getaffinity(0))
# The embedded broker's quirk workaround (stale listed ends); off on any other broker.
CONFIRM_CHANGELOG_ENDS = {"on": False}


class CpuClock:
    """CPU seconds of the broker process (None for an external cluster, whose CPU is not here)."""

    def __init__(self, broker_pid: int | None) -> None:
        self._pid = broker_pid

    def broker(self) -> float | None:
        return cpu_seconds(self._pid) if self._pid is not None else None


def _cpu_fields(records: int, path_cpu: float, broker_cpu: float | None) -> dict:
    """CPU microseconds per record of the path's processes and of the broker."""
    return {"cpu_us_per_record": round(path_cpu / records * 1e6, 1),
            "broker_cpu_us_per_record": None if broker_cpu is None else round(broker_cpu / records * 1e6, 1)}


def raw_read(bootstrap: str, topic: str, partitions: int, total: int, clock: CpuClock) -> dict:
    import fastavro
    from confluent_kafka import Consumer, TopicPartition

    from stream_app.codecs.avro import load_schema
    from stream_app.resources import AVRO_DIR

    schema = load_schema(AVRO_DIR / "matched_record.avsc")
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"raw-{uuid.uuid4()}", "enable.auto.commit": False,
                         "fetch.max.bytes": 52428800, "max.partition.fetch.bytes": 10485760})
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    count = size = 0
    started = None
    progressed = time.monotonic()
    while count < total:
        batch = consumer.consume(10000, timeout=1.0)
        if batch:
            progressed = time.monotonic()
        elif time.monotonic() - progressed > RAW_STALL_S:
            consumer.close()
            raise RuntimeError(f"raw read stalled at {count} of {total} records for {RAW_STALL_S} s")
        if started is None and batch:
            started = time.perf_counter()
            cpu_started, broker_started = time.process_time(), clock.broker()
        for msg in batch:
            if msg.error() is None:
                value = msg.value()
                buf = io.BytesIO(value)
                buf.seek(5)
                fastavro.schemaless_reader(buf, schema, None)
                count += 1
                size += len(value)
    elapsed = time.perf_counter() - started
    cpu, broker = time.process_time() - cpu_started, clock.broker()  # all threads, librdkafka's too
    consumer.close()
    return {"path": "a raw confluent-kafka read + decode", "records": count, "seconds": elapsed, "bytes": size,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            **_cpu_fields(count, cpu, None if broker is None else broker - broker_started)}


def _names(scope: str, extension: str) -> str:
    partition = "_P{{ partition }}" if scope == "partition" else ""
    return "F_{{ window_start | ts('%Y%m%d%H') }}" + partition + "_{{ part }}." + extension


RAW_STALL_S = 60  # the raw read fetched nothing for this long: the broker lost its way
XSD_PROCESS = [True]  # --xsd-in-worker sets it false


def live_worker(bootstrap: str, topic: str, partitions: int, total: int, size: int, structured: bool,
                work: Path, clock: CpuClock, streaming: bool = False, decode_process: bool = True,
                scope: str = "partition", max_buffered: int = 400_000, workers: int = 1) -> dict:
    """``workers``: replicas of the app in one group on this machine (window scope), each with its
    own output directory, as the chart runs them."""
    import yaml

    out = work / f"out-{'structured' if structured else 'template'}-{scope}-{max_buffered}-{workers}"
    out.mkdir()
    app_id = f"bench-{uuid.uuid4().hex[:8]}"
    # the worker expects its journal and dead-letter topics (a cluster may not create topics on first use)
    create_topics(bootstrap, {f"{app_id}-journal": 1, f"{app_id}-dlq": 1})
    worker = {"window": {"sizeMs": 6 * 3600 * 1000, "graceMs": 300_000, "idleTimeoutMs": 2000},
              "maxRecordsPerFile": min(50_000, max_buffered), "maxBufferedRecords": max_buffered, "batchSize": 20_000,
              "streamingAppendEnabled": streaming, "fileScope": scope}
    if structured:
        # the pack's header names the partition; business files use the version without it
        pack = "1.0.0" if scope == "partition" else "1.1.0"
        worker.update(mode="structured", schema={"id": "pcs-clearing", "version": pack},
                      fileNameTemplate=_names(scope, "xml"), xsdProcess=XSD_PROCESS[0])
    else:
        worker.update(fileNameTemplate=_names(scope, "txt"),
                      headerTemplate="HDR|{{ window_start | ts }}\n", footerTemplate="TRL|{{ totals.count }}\n",
                      recordTemplate="DTL|{{ seq }}|{{ record.record_id }}|{{ record.amount | money }}|"
                                     "{{ record.currency }}|{{ record.merchant_name }}\n")
    config = {"appId": app_id, "kafka": {"bootstrapServers": bootstrap, "inputTopics": [topic],
                                          "journalTopic": f"{app_id}-journal", "deadLetterTopic": f"{app_id}-dlq",
                                          "topicPartitions": partitions, "commitIntervalMs": 500,
                                          "confirmChangelogEnds": CONFIRM_CHANGELOG_ENDS["on"]},
              "worker": worker, "input": {"decodeProcess": decode_process},
              "sink": {"type": "local", "localTargetDir": str(out)}, "logLevel": "WARNING",
              "dataDir": str(work / f"{app_id}-data")}
    outs = [out] + [out.with_name(f"{out.name}-r{i}") for i in range(1, workers)]
    paths = []
    for i, replica_out in enumerate(outs):
        replica_out.mkdir(exist_ok=True)
        replica = {**config, "workerId": f"{app_id}-{i}", "sink": {"type": "local", "localTargetDir": str(replica_out)},
                   "dataDir": str(work / f"{app_id}-data-{i}")}
        paths.append(work / f"{app_id}-{i}.yaml")
        paths[-1].write_text(yaml.safe_dump(replica))
    spawned = time.time()
    procs = [spawn_worker(str(path), str(work / f"{app_id}-{i}.log")) for i, path in enumerate(paths)]
    peaks = [0.0] * workers
    # One long-lived client asks for the group's commits: a new client per poll costs CPU the
    # worker would otherwise have on this 2-core machine.
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    from stream_app.ops.problems import is_transient

    conf = {"bootstrap.servers": bootstrap, "group.id": app_id, "enable.auto.commit": False}
    watcher = Consumer(conf)
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    last = [0]

    manifests = [replica_out / "manifest.jsonl" for replica_out in outs]

    def committed() -> int:
        if scope == "window":  # input commits say routed; the files are what counts
            return sum(json.loads(line)["records"] for manifest in manifests if manifest.exists()
                       for line in manifest.read_text().splitlines())
        nonlocal watcher
        try:
            last[0] = sum(tp.offset for tp in watcher.committed(tps, timeout=10) if tp.offset > 0)
        except KafkaException as exc:  # Apache Kafka: NOT_COORDINATOR while the group is new
            if not is_transient(exc.args[0]):
                raise
            watcher.close()
            watcher = Consumer(conf)  # librdkafka can keep asking the coordinator it was told first
        return last[0]

    # wall time, worker + helper CPU, the worker process's own CPU, broker CPU
    samples: list[tuple[float, float, float, float | None]] = []

    def sample() -> None:
        samples.append((time.time(), sum(cpu_seconds(p.pid) for p in procs),
                        sum(cpu_seconds(p.pid, children=False) for p in procs), clock.broker()))

    def measure_peaks() -> None:
        for i, p in enumerate(procs):
            peaks[i] = max(peaks[i], peak_rss_mb(p.pid))

    try:
        while committed() < total:
            for i, p in enumerate(procs):
                if p.poll() is not None:
                    raise RuntimeError(f"worker exited; see {work / f'{app_id}-{i}.log'}")
            measure_peaks()
            sample()
            time.sleep(0.2)
        done = time.time()
        sample()
        measure_peaks()
    finally:
        watcher.close()
        for p in procs:
            stop_worker(p)
    peak = max(peaks)
    # The clock starts at the first record processed: the journal's first event (a window
    # opening) carries its wall time.  Start-up and group join are reported apart.
    events = read_journal(bootstrap, f"{app_id}-journal")
    first = min(e["occurred_at"] for e in events).timestamp()
    if scope == "partition":
        name = "c live worker, structured (XML)" if structured else "b live worker, template"
    else:
        name = "g business files, structured" if structured else "f business files, template"
        if workers > 1:
            name = f"{name}, {workers} workers"
    # CPU from the first record on: the samples around it, interpolated (start-up is not counted).
    tree_cpu, own_cpu = (samples[-1][i] - _at(samples, first, i) for i in (1, 2))
    broker_cpu = None if samples[-1][3] is None else samples[-1][3] - _at(samples, first, 3)
    seconds = done - first
    # How busy each process was on average, in cores: the worker (GIL-bound but for C code
    # outside the GIL) and its helper processes (decode; XSD in structured mode).
    busy = {"worker_cores": round(own_cpu / seconds, 2), "helper_cores": round((tree_cpu - own_cpu) / seconds, 2)}
    if workers > 1:
        busy["peak_rss_mb_each"] = [round(p, 1) for p in peaks]  # type: ignore[assignment]
    busy.update(close_to_file(events))  # type: ignore[arg-type]
    return {"path": name, "records": total, "seconds": seconds, "bytes": size, "peak_rss_mb": peak,
            "startup_seconds": round(first - spawned, 1), **_cpu_fields(total, tree_cpu, broker_cpu), **busy}


def close_to_file(events: list[dict]) -> dict:
    """Seconds from a window's `closed` event to the `created` event of its last file: the time
    from a window's close to its file being written and journaled (median and worst)."""
    closed = {e["file_key"]: e["occurred_at"] for e in events if e["event_type"] == "closed"}
    written: dict[str, Any] = {}
    for e in events:
        if e["event_type"] == "created" and (e["file_key"] not in written or e["occurred_at"] > written[e["file_key"]]):
            written[e["file_key"]] = e["occurred_at"]
    delays = sorted((written[key] - at).total_seconds() for key, at in closed.items() if key in written)
    if not delays:
        return {}
    return {"close_to_file_median_s": round(delays[len(delays) // 2], 2), "close_to_file_max_s": round(delays[-1], 2)}


def _at(samples: list[tuple], wall: float, column: int) -> float:
    """A sampled counter at a wall time, interpolated linearly between the samples around it."""
    before = max((s for s in samples if s[0] <= wall), default=samples[0], key=lambda s: s[0])
    after = min((s for s in samples if s[0] >= wall), default=samples[-1], key=lambda s: s[0])
    if after[0] == before[0]:
        return before[column]
    share = (wall - before[0]) / (after[0] - before[0])
    return before[column] + share * (after[column] - before[column])


def replay(bootstrap: str, topic: str, partitions: int, total: int, size: int, work: Path, clock: CpuClock,
           scope: str = "partition") -> dict:
    names = _names(scope, "txt")
    script = f"""
import json, os, sys
from pathlib import Path
sys.path.insert(0, {str(ROOT / "bench")!r})
from procstats import cpu_seconds, peak_rss_mb
from stream_app.config import parse_config
from stream_app.replay.cli import ReplayRequest, run_replay
settings = parse_config({{"appId": "replay-bench", "kafka": {{"bootstrapServers": "{bootstrap}", "inputTopics": ["{topic}"],
  "topicPartitions": {partitions}}}, "worker": {{"window": {{"sizeMs": 21600000, "graceMs": 300000}},
  "maxRecordsPerFile": 50000, "maxBufferedRecords": 400000, "fileScope": "{scope}",
  "fileNameTemplate": "{names}",
  "recordTemplate": "DTL|{{{{ seq }}}}|{{{{ record.record_id }}}}|{{{{ record.amount | money }}}}|"
                    "{{{{ record.currency }}}}|{{{{ record.merchant_name }}}}\\\\n"}},
  "sink": {{"type": "local", "localTargetDir": "{work}"}}}})
cpu_started = cpu_seconds(os.getpid())
report = run_replay(settings, ReplayRequest(out_dir=Path("{work}") / "replay-{scope}"))
# CPU and peak RSS of the replay process with its decode helper (a live child until exit)
print(json.dumps({{"records": report.records, "seconds": report.seconds, "cpu": cpu_seconds(os.getpid()) - cpu_started,
                   "peak_rss_mb": peak_rss_mb(os.getpid())}}))
"""
    broker_started = clock.broker()
    # from a file, not ``-c``: a profiler (py-spy --subprocesses) then names the process in one line
    script_path = work / f"replay-{scope}.py"
    script_path.write_text(script)
    proc = subprocess.run([sys.executable, str(script_path)], capture_output=True, text=True, cwd=ROOT)
    if proc.returncode:
        raise RuntimeError(proc.stderr[-2000:])
    broker = clock.broker()
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    cpu = _cpu_fields(result["records"], result.pop("cpu"), None if broker is None else broker - broker_started)
    name = "d replay (same range)" if scope == "partition" else "h replay, business files"
    return {"path": name, "bytes": size, **result, **cpu}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--skip-rss", action="store_true", help="skip (e), the streaming RSS runs")
    parser.add_argument("--streaming", action="store_true", help="b and c with streamingAppendEnabled")
    parser.add_argument("--paths", default="abcdfgh",
                        help="which paths to run (a, the ceiling, always runs): b c d partition scope, "
                             "f g h the same in window scope (business files), i f under backpressure")
    parser.add_argument("--workers", type=int, default=1,
                        help="f and g with this many workers in one group on this machine (scale)")
    parser.add_argument("--xsd-in-worker", action="store_true",
                        help="c and g with worker.xsdProcess: false (the XSD check in the worker process)")
    parser.add_argument("--decode-in-worker", action="store_true",
                        help="b and c with input.decodeProcess: false (no helper process)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where pipeline.json goes")
    parser.add_argument("--broker", choices=["embedded", "apache"], default="embedded",
                        help="the broker started for the run (KAFKA_BOOTSTRAP_SERVERS: an external one)")
    parser.add_argument("--keep-work", action="store_true",
                        help="keep the run's files, logs and broker data (printed at the end); else removed")
    args = parser.parse_args()
    XSD_PROCESS[0] = not args.xsd_in_worker
    work = Path(tempfile.mkdtemp(prefix="stream-app-bench-"))

    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    broker: Any = None
    broker_pid = None
    broker_name = "external"
    if not bootstrap and args.broker == "apache":
        sys.path.insert(0, str(ROOT))
        from tests.apache_kafka import KAFKA_VERSION, ApacheKafka

        broker = ApacheKafka(work / "apache-kafka", heap="1g").start()
        bootstrap, broker_pid, broker_name = broker.bootstrap, broker.proc.pid, f"Apache Kafka {KAFKA_VERSION}"
    elif not bootstrap:
        broker = EmbeddedBroker(log_file=work / "broker.log")
        bootstrap, broker_pid, broker_name = broker.start(), broker.pid, "embedded (Tansu)"
        CONFIRM_CHANGELOG_ENDS["on"] = True
    print(f"broker: {broker_name} at {bootstrap}; per-record hot path: {describe()}")
    clock = CpuClock(broker_pid)
    topic = f"bench-{uuid.uuid4().hex[:6]}"
    try:
        create_topics(bootstrap, {topic: args.partitions})
        values = list(encoded_matched_records(args.records, seed=7))
        size = sum(len(v) for v in values)
        produce(bootstrap, topic, ((i % args.partitions, None, v) for i, v in enumerate(values)))
        del values
        # The ceiling is read again after every path: on a shared machine the raw rate drifts
        # between runs (up to 1.5x here), so each path is compared with the raw reads made just
        # before and just after it.
        raws = [raw_read(bootstrap, topic, args.partitions, args.records, clock)]
        rows = []
        for path in "bcdfghi":
            if path not in args.paths:
                continue
            scope = "partition" if path in "bcd" else "window"
            if path in "dh":
                row = replay(bootstrap, topic, args.partitions, args.records, size, work, clock, scope)
            else:
                row = live_worker(bootstrap, topic, args.partitions, args.records, size, path in "cg", work,
                                  clock, args.streaming, not args.decode_in_worker, scope,
                                  20_000 if path == "i" else 400_000, args.workers if path in "fg" else 1)
                if path == "i":
                    row["path"] = "i business files, backlog > buffer"
            raws.append(raw_read(bootstrap, topic, args.partitions, args.records, clock))
            row["ceiling_records_per_s"] = round(sum(r["records"] / r["seconds"] for r in raws[-2:]) / 2)
            rows.append(row)
    finally:
        if broker:
            broker.stop()
        # hundreds of MB per run (written files, worker data, Apache Kafka's log)
        if args.keep_work:
            print(f"the run's files, logs and broker data: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    raw_rates = [r["records"] / r["seconds"] for r in raws]
    mean_raw = sum(raw_rates) / len(raw_rates)
    ceiling = {**raws[0], "seconds": raws[0]["records"] / mean_raw, "runs_records_per_s": [round(x) for x in raw_rates],
               "ceiling_records_per_s": round(mean_raw)}
    rows.insert(0, ceiling)
    print(f"\n{args.records} records, {args.partitions} partitions, {size / 1e6:.1f} MB of Avro")
    print("raw read runs (rec/s): " + ", ".join(f"{x:.0f}" for x in raw_rates) + "; each path's ratio uses the runs"
          " just before and after it\n")
    print(f"{'path':<38} {'rec/s':>10} {'x raw':>7} {'MB/s':>7} {'seconds':>8} {'peak RSS MB':>12} {'start-up s':>10} "
          f"{'CPU us/rec':>10} {'broker us':>9} {'CPU-bound x':>11}")
    for row in rows:
        rate = row["records"] / row["seconds"]
        row.update(records_per_s=round(rate), ratio_to_raw=round(rate / row["ceiling_records_per_s"], 3),
                   mb_per_s=round(row["bytes"] / 1e6 / row["seconds"], 2))
        # What the CPU this path spends per record (with the broker's) allows on this machine's
        # cores if its work overlapped perfectly: an upper bound no scheduling can beat.
        spent = row["cpu_us_per_record"] + (row["broker_cpu_us_per_record"] or 0.0)
        row["cpu_bound_ratio_to_raw"] = round(CORES * 1e6 / spent / row["ceiling_records_per_s"], 3)
        broker_us = "" if row["broker_cpu_us_per_record"] is None else f"{row['broker_cpu_us_per_record']:.1f}"
        print(f"{row['path']:<38} {rate:>10.0f} {row['ratio_to_raw']:>7.3f} {row['mb_per_s']:>7.1f} "
              f"{row['seconds']:>8.1f} {row['peak_rss_mb']:>12.1f} {row.get('startup_seconds', ''):>10} "
              f"{row['cpu_us_per_record']:>10.1f} {broker_us:>9} {row['cpu_bound_ratio_to_raw']:>11.3f}")
    print(f"\nCPU us/rec: the path's processes (worker + its helpers); broker us: the broker's ({broker_name}).\n"
          f"CPU-bound x: {CORES} cores / (both) as a ratio to the raw rate, the most the path could reach here.")
    for row in rows:
        if "worker_cores" in row:
            each = f"; peak RSS of each worker (with its helper) {row['peak_rss_mb_each']} MB" \
                if "peak_rss_mb_each" in row else ""
            if "close_to_file_median_s" in row:
                each += (f"; a window's close to its file written: median {row['close_to_file_median_s']} s, "
                         f"worst {row['close_to_file_max_s']} s")
            print(f"{row['path']}: worker process busy {row['worker_cores']:.2f} cores, its helper processes "
                  f"{row['helper_cores']:.2f}{each}")
    result = {"records": args.records, "partitions": args.partitions, "cores": CORES, "broker": broker_name,
              "rows": rows}
    if not args.skip_rss:
        for scope, suffix in (("partition", ""), ("window", "_window")):
            rss = subprocess.run([sys.executable, str(ROOT / "bench" / "streaming_rss.py"), "--scope", scope],
                                 capture_output=True, text=True)
            print(f"\ne  streaming append, one window, fileScope: {scope}:\n" + rss.stdout)
            result[f"streaming_rss{suffix}"] = json.loads((RESULTS / f"streaming_rss_template{suffix}.json").read_text())
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "pipeline.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
