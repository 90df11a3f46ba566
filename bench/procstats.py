"""CPU time and peak RSS of a process and its children, read from /proc (Linux).

The live worker runs as a process with a decode helper as its child; the broker is a process of
its own.  Their CPU seconds per record say how far a path is from what two cores can give,
independently of how well its work overlaps.
"""

from __future__ import annotations

import os

_TICKS = os.sysconf("SC_CLK_TCK")


def process_tree(pid: int) -> list[int]:
    """The process and its live children (those any of its threads started)."""
    pids = [pid]
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as fh:
                pids.extend(int(child) for child in fh.read().split())
    except OSError:
        pass
    return pids


def cpu_seconds(pid: int, children: bool = True) -> float:
    """User + system CPU seconds used so far by the process and (unless ``children`` is false)
    its children, live or waited for."""
    total = 0
    for each in process_tree(pid) if children else [pid]:
        try:
            with open(f"/proc/{each}/stat") as fh:
                # The fields after the parenthesized command name: utime, stime, cutime, cstime are
                # the 14th to 17th (cutime/cstime: children that exited and were waited for).
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(value) for value in fields[11:15 if children else 13])
    return total / _TICKS


def peak_rss_mb(pid: int) -> float:
    """Peak RSS of the process plus its live children: an upper bound of the group's peak."""
    total = 0.0
    for each in process_tree(pid):
        try:
            with open(f"/proc/{each}/status") as fh:
                for line in fh:
                    if line.startswith("VmHWM:"):
                        total += int(line.split()[1]) / 1024
        except OSError:
            continue
    return total
