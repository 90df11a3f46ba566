"""SFTP delivery throughput against a local OpenSSH sshd: one run, figures printed.

Writes N files of S bytes into a local sink, queues them in an outbox and times the deliverer
(``delivery/deliverer.py``'s own loop: temporary name, fsync, size check, rename, read-back only when a
name exists) until every file is delivered, for each ``--parallel`` value; then times OpenSSH's
own ``sftp -b`` uploading the same files with ``put`` (one connection, no fsync, no rename),
the floor for this server.  Every run uploads into an empty directory.

    python bench/delivery_bench.py [--files 1000] [--size 204800] [--parallel 1 4 8]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from stream_app.config import SftpDestinationSettings  # noqa: E402
from stream_app.core.records import SourceRecord  # noqa: E402
from stream_app.core.windows import FileCut, FileKey  # noqa: E402
from stream_app.delivery.deliverer import Deliverer  # noqa: E402
from stream_app.pipeline.journal import Journal  # noqa: E402
from stream_app.pipeline.memory import MemoryOutboxStore  # noqa: E402
from stream_app.pipeline.outbox import Outbox  # noqa: E402
from stream_app.sinks.local import LocalSink  # noqa: E402
from tests.helpers import CollectingPublisher  # noqa: E402
from tests.sshd import Sshd  # noqa: E402

OWNER = ("in", 0)


def write_files(sink: LocalSink, count: int, size: int) -> list:
    written = []
    for i in range(count):
        body = os.urandom(size)
        cut = FileCut.of(FileKey("in", 0, i, i + 1), 0, [SourceRecord("in", 0, i, 0, {})])
        written.append((cut, sink.write(f"CLR_{i:05d}.txt", lambda body=body: iter([body]))))
    return written


def run_deliverer(server: Sshd, sink: LocalSink, written: list, parallel: int, remote: Path) -> float:
    store = MemoryOutboxStore()
    outbox = Outbox(store, ["bench"], CollectingPublisher(), Journal("bench"))
    for cut, result in written:
        outbox.queue(cut, result, OWNER, 0)
    outbox.persist()
    settings = SftpDestinationSettings(**server.destination("bench", remoteDir=str(remote), maxParallel=parallel,
                                                            timeoutSeconds=60))
    deliverer = Deliverer(outbox, [settings], "bench", sink, lambda: {OWNER})

    async def work() -> float:
        start = time.perf_counter()
        running = asyncio.ensure_future(deliverer.run())  # the worker's loop, as the app task runs it
        while store.data:
            await asyncio.sleep(0.25)  # the committer's tick persists what was delivered
            outbox.persist()
        elapsed = time.perf_counter() - start
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        return elapsed

    return asyncio.run(work())


def run_sftp_batch(server: Sshd, sink: LocalSink, written: list, remote: Path) -> float:
    batch = remote.parent / "batch.txt"
    batch.write_text("".join(f"put {result.location} {remote}/{result.name}\n" for _, result in written))
    start = time.perf_counter()
    subprocess.run(["sftp", "-q", "-b", str(batch), "-i", str(server.user_key), "-P", str(server.port),
                    "-o", f"UserKnownHostsFile={server.known_hosts}", "-o", "StrictHostKeyChecking=yes",
                    "-o", "BatchMode=yes", f"{server.user}@127.0.0.1"], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def verify(remote: Path, written: list) -> None:
    for _, result in written:
        data = (remote / result.name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == result.sha256, result.name
    assert len(list(remote.iterdir())) == len(written), "temporary files left behind"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--size", type=int, default=200 * 1024)
    parser.add_argument("--parallel", type=int, nargs="+", default=[1, 4, 8])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="delivery-bench-") as tmp:
        base = Path(tmp)
        (base / "sink").mkdir()
        sink = LocalSink(base / "sink", manifest=False)
        written = write_files(sink, args.files, args.size)
        server = Sshd(base / "sshd").start()
        megabytes = args.files * args.size / 1e6
        print(f"{args.files} files of {args.size} bytes ({megabytes:.0f} MB) to sshd on loopback")
        try:
            for parallel in args.parallel:
                remote = base / f"deliverer-{parallel}"
                remote.mkdir()
                seconds = run_deliverer(server, sink, written, parallel, remote)
                verify(remote, written)
                print(f"deliverer, maxParallel {parallel:>2}: {seconds:7.2f} s  {args.files / seconds:7.1f} files/s  "
                      f"{megabytes / seconds:6.1f} MB/s")
            remote = base / "sftp-batch"
            remote.mkdir()
            seconds = run_sftp_batch(server, sink, written, remote)
            verify(remote, written)
            print(f"sftp -b (put):            {seconds:7.2f} s  {args.files / seconds:7.1f} files/s  "
                  f"{megabytes / seconds:6.1f} MB/s")
        finally:
            server.stop()


if __name__ == "__main__":
    main()
