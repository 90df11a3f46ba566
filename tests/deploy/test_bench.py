"""The benchmark's own measurements: /proc CPU accounting, and a small run of every path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

from procstats import cpu_seconds, peak_rss_mb, process_tree  # noqa: E402

# A child that starts a grandchild burning CPU, then waits for it.
_PARENT = """
import subprocess, sys
subprocess.run([sys.executable, "-c", "import sys, time\\nend = time.process_time() + float(sys.argv[1])\\n"
                "while time.process_time() < end: pass", sys.argv[1]])
"""


def _spawn(burn_seconds: float) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", _PARENT, str(burn_seconds)])


def test_cpu_of_a_process_counts_its_children_live_and_waited_for() -> None:
    parent = _spawn(1.5)
    try:
        # Until the live grandchild has burned 0.4 s of CPU (it burns 1.5 s of CPU time, however
        # loaded the machine is): a fixed sleep would measure the machine's load instead.
        deadline = time.monotonic() + 30
        tree, live = [], 0.0
        while time.monotonic() < deadline:
            tree, live = process_tree(parent.pid), cpu_seconds(parent.pid)
            if len(tree) == 2 and live >= 0.4:
                break
            time.sleep(0.05)
        assert len(tree) == 2 and tree[0] == parent.pid
        assert 0.4 <= live <= 1.5  # the grandchild's burn so far; the parent itself only waits
        assert peak_rss_mb(parent.pid) > 0
        # Once the grandchild has exited and was waited for, its CPU moves to the parent's account.
        while len(process_tree(parent.pid)) == 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert cpu_seconds(parent.pid) >= 1.4
    finally:
        parent.wait(timeout=20)


def test_a_process_that_is_gone_has_no_cpu_or_rss() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert cpu_seconds(proc.pid) == 0.0 and peak_rss_mb(proc.pid) == 0.0 and process_tree(proc.pid) == [proc.pid]


@pytest.mark.e2e
def test_benchmark_measures_every_path_against_the_raw_read(tmp_path: Path) -> None:
    records = 4000
    proc = subprocess.run([sys.executable, "bench/pipeline_bench.py", "--records", str(records), "--paths", "bcd",
                           "--skip-rss", "--results", str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "pipeline.json").read_text())
    rows = {row["path"][0]: row for row in result["rows"]}
    assert set(rows) == {"a", "b", "c", "d"}
    assert result["cores"] == len(os.sched_getaffinity(0))
    for path, row in rows.items():
        assert row["records"] == records, path
        assert row["records_per_s"] > 0 and row["ratio_to_raw"] > 0, path
        assert row["cpu_us_per_record"] > 0, path
        if "KAFKA_BOOTSTRAP_SERVERS" not in os.environ:  # the embedded broker's CPU is read too
            assert row["broker_cpu_us_per_record"] is not None, path
        # No path runs faster than the CPU it spent allows on these cores (10 % for sampling).
        assert row["ratio_to_raw"] <= row["cpu_bound_ratio_to_raw"] * 1.1, path
    assert rows["a"]["ratio_to_raw"] == 1.0
    assert "CPU-bound x" in proc.stdout
