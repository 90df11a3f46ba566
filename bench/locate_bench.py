"""How long ``stream-app locate`` takes on a large topic: one run, figures printed.

Produces N records (1M by default) on P partitions of the embedded broker, writes their files
with a replay (business files of ``--per-file`` records, manifest included), then times:

* ``--offset``: the manifest lookup plus one bounded read of the part that holds the record
  (in process, for a random sample of offsets; and once through the command, start-up included);
* ``--key``: a field's value within a time range of +-1 s around one record's Kafka timestamp
  (only that range of each partition is read).

    python bench/locate_bench.py [--records 1000000] [--partitions 4] [--per-file 1000]
"""

from __future__ import annotations

import argparse
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402

from stream_app.config import parse_config  # noqa: E402
from stream_app.replay.cli import ReplayRequest, run_replay  # noqa: E402
from stream_app.replay.reader import PartitionRange, RangeReader  # noqa: E402
from stream_app.tools.broker import EmbeddedBroker, create_topics  # noqa: E402
from stream_app.tools.demo import encoded_matched_records, matched_records  # noqa: E402
from stream_app.tools.locate import Locator  # noqa: E402
from stream_app.tools.topics import produce  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--per-file", type=int, default=1000)
    parser.add_argument("--samples", type=int, default=20)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="locate-bench-"))
    broker = EmbeddedBroker()
    broker.start()
    try:
        run(broker.bootstrap, args, work)
    finally:
        broker.stop()


def run(bootstrap: str, args: argparse.Namespace, work: Path) -> None:
    topic = f"locate-{uuid.uuid4().hex[:6]}"
    create_topics(bootstrap, {topic: args.partitions, f"{topic}-dead": 1})
    started = time.perf_counter()
    values = encoded_matched_records(args.records, seed=3)
    produce(bootstrap, topic, ((i % args.partitions, None, v) for i, v in enumerate(values)))
    print(f"produced {args.records} records on {args.partitions} partitions in {time.perf_counter() - started:.1f} s")
    data = {"appId": "locate-bench", "kafka": {"bootstrapServers": bootstrap, "inputTopics": [topic],
                                                "topicPartitions": args.partitions, "deadLetterTopic": f"{topic}-dead"},
            "worker": {"window": {"sizeMs": 21_600_000, "graceMs": 300_000}, "maxRecordsPerFile": args.per_file,
                       "maxBufferedRecords": 400_000, "fileScope": "window",
                       "fileNameTemplate": "F_{{ window_start | ts('%Y%m%dT%H') }}_{{ '%05d' % part }}.txt",
                       "recordTemplate": "{{ record.record_id }}|{{ record.amount | money }}\n"},
            "sink": {"type": "local", "localTargetDir": str(work / "files")}}
    settings = parse_config(data)
    (work / "files").mkdir()
    started = time.perf_counter()
    report = run_replay(settings, ReplayRequest())
    print(f"replay wrote {len(report.files)} files in {time.perf_counter() - started:.1f} s")
    config = work / "config.yaml"
    config.write_text(yaml.safe_dump(data))

    rng = random.Random(7)
    coordinates = [(topic, rng.randrange(args.partitions), rng.randrange(args.records // args.partitions))
                   for _ in range(args.samples)]
    locator = Locator(settings)
    try:
        started = time.perf_counter()
        print(f"manifest: {len(locator._entries)} lines, read in {time.perf_counter() - started:.2f} s")
        seconds = []
        for c in coordinates:
            started = time.perf_counter()
            found = locator.locate(c)
            seconds.append(time.perf_counter() - started)
            assert found["status"] == "in a file", found
        print(f"--offset, in process: median {statistics.median(seconds) * 1000:.0f} ms, "
              f"max {max(seconds) * 1000:.0f} ms over {len(seconds)} records")
    finally:
        locator.close()
    t, p, o = coordinates[0]
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "stream_app.cli", "locate", "--config", str(config), "--json",
                    f"--offset={t}:{p}:{o}"], check=True, capture_output=True, cwd=ROOT)
    print(f"--offset, the command (start-up included): {time.perf_counter() - started:.2f} s")

    # --key: +-1 s around one record's Kafka timestamp
    reader = RangeReader({"bootstrap.servers": bootstrap})
    try:
        (raw,) = next(iter(reader.read([PartitionRange(t, p, o, o + 1)])))
    finally:
        reader.close()
    assert raw.timestamp_ms is not None
    record_id = list(matched_records(o * args.partitions + p + 1, seed=3))[-1]["record_id"]
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "stream_app.cli", "locate", "--config", str(config), "--json",
                           f"--key=record_id={record_id}",
                           f"--from-time={iso(raw.timestamp_ms - 1000)}", f"--to-time={iso(raw.timestamp_ms + 1000)}"],
                          check=True, capture_output=True, text=True, cwd=ROOT)
    print(f"--key within +-1 s, the command: {time.perf_counter() - started:.2f} s, "
          f"{len(done.stdout.splitlines())} record(s) found")


def iso(ms: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ms / 1000, UTC).isoformat()


if __name__ == "__main__":
    main()
