"""Peak RSS of streaming-append mode for one window of 10k / 100k / 1M records.

Each size runs in its own process (so peak RSS is per size): the seeded sample records are
encoded as Avro and driven through the same pipeline the worker uses, in streaming mode, into
one 6-hour window, then finalized.  Prints a table and writes bench/results/streaming_rss.json.

    python bench/streaming_rss.py [--sizes 10000,100000,1000000] [--mode template|structured]
                                  [--scope partition|window]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def run_one(size: int, mode: str, scope: str) -> dict:
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
    from stream_app.tools.demo import matched_records
    from tests.helpers import CollectingPublisher, config_dict

    work = Path(tempfile.mkdtemp(prefix="bench-rss-"))
    out = work / "out"
    out.mkdir()
    partitions = 4 if scope == "window" else 1
    names = "F_{{ part }}_{{ window_start | ts('%Y%m%d%H') }}" if scope == "window" else \
        "F_{{ partition }}_{{ part }}_{{ window_start | ts('%Y%m%d%H') }}"
    worker = {"maxRecordsPerFile": 10_000_000, "maxBufferedRecords": 10_000_000, "streamingAppendEnabled": True,
              "window": {"sizeMs": 6 * 3600 * 1000, "graceMs": 0, "idleTimeoutMs": 1000}, "fileScope": scope,
              "fileNameTemplate": names + ".txt"}
    if mode == "structured":
        worker.update(mode="structured", schema={"id": "fixed-clearing", "version": "1.0.0" if scope == "partition"
                                                 else "1.1.0"},
                      headerTemplate="", footerTemplate="", recordTemplate=None, fileNameTemplate=names + ".dat",
                      parties={"senderId": "S", "receiverId": "R"})
    data = config_dict(out, **worker)
    data["worker"] = {k: v for k, v in data["worker"].items() if v not in ("", None)}
    data["kafka"]["topicPartitions"] = partitions
    data["input"] = {"decodeProcess": False}
    settings = parse_config(data)
    schema = load_schema(AVRO_DIR / "matched_record.avsc")
    publisher = CollectingPublisher()

    def raws():
        # span_hours=5.5: every record falls in the same 6-hour window (window scope: across 4 partitions)
        for i, record in enumerate(matched_records(size, seed=1, span_hours=5.5)):
            yield RawRecord("in", i % partitions, i // partitions, None, None, encode_confluent(1, schema, record))

    started = time.perf_counter()
    if scope == "window":
        sender = LoopbackSender(settings.repartition_topic)
        routing = build_routing(settings, MemoryStateStore(), publisher, sender)
        files = build_pipeline(settings, MemoryStateStore(), publisher, sink=LocalSink(out, manifest=False),
                               spool_dir=work / "spool")
        summary = run_window_records(routing, files, sender, settings.input_partitions, raws())
    else:
        pipeline = FilePipeline(window_policy(settings), [], build_decoder(settings), build_assembler(settings),
                                LocalSink(out, manifest=False), MemoryStateStore(), publisher, Journal("bench"),
                                spool_dir=work / "spool")
        summary = run_records(pipeline, raws())
    elapsed = time.perf_counter() - started
    files = sorted(out.iterdir())
    return {
        "records": size, "mode": mode, "scope": scope, "files": len(files), "records_in_files": summary.records,
        "late_dead_letters": len(publisher.dead), "bytes": sum(f.stat().st_size for f in files),
        "seconds": round(elapsed, 2), "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--mode", choices=["template", "structured"], default="template")
    parser.add_argument("--scope", choices=["partition", "window"], default="partition",
                        help="window: business files, 4 input partitions into one window")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.mode, args.scope)))
        return
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        proc = subprocess.run([sys.executable, __file__, "--one", str(size), "--mode", args.mode, "--scope", args.scope],
                              capture_output=True, text=True, check=True, cwd=Path(__file__).parent.parent)
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    base = rows[0]["peak_rss_mb"]
    print(f"{'records':>10} {'files':>5} {'MB out':>8} {'seconds':>8} {'rec/s':>9} {'peak RSS MB':>12} {'vs first':>9}")
    for row in rows:
        row["rss_ratio_to_first"] = round(row["peak_rss_mb"] / base, 3)
        print(f"{row['records']:>10} {row['files']:>5} {row['bytes'] / 1e6:>8.1f} {row['seconds']:>8.1f} "
              f"{row['records'] / row['seconds']:>9.0f} {row['peak_rss_mb']:>12.1f} {row['rss_ratio_to_first']:>9.3f}")
    RESULTS.mkdir(exist_ok=True)
    suffix = "" if args.scope == "partition" else "_window"
    (RESULTS / f"streaming_rss_{args.mode}{suffix}.json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    main()
