"""Failpoints for crash and fault tests: named places where a test can make the worker die or
an I/O call fail.  Inert unless ``STREAM_APP_FAILPOINTS`` is set, e.g.

    STREAM_APP_FAILPOINTS="sink.before-rename=crash@3,sink.write=ENOSPC*2"

``NAME=crash@N`` exits the process (as SIGKILL would) the N-th time NAME is reached;
``NAME=ERRNO*K`` raises ``OSError(ERRNO)`` the first K times, ``NAME=ERRNO@N`` the N-th time only; ``NAME=delay@MS`` sleeps MS
milliseconds every time (a slow disk or network, to widen race windows).
"""

from __future__ import annotations

import errno
import os
import time

_SPEC = os.environ.get("STREAM_APP_FAILPOINTS", "")
_ACTIVE: dict[str, list] = {}
for item in filter(None, (part.strip() for part in _SPEC.split(","))):
    name, _, action = item.partition("=")
    if action.startswith("crash@"):
        _ACTIVE[name] = ["crash", int(action[6:])]
    elif action.startswith("delay@"):
        _ACTIVE[name] = ["delay", int(action[6:]) / 1000]
    elif "@" in action:
        code, _, nth = action.partition("@")
        _ACTIVE[name] = ["nth", getattr(errno, code), int(nth)]
    else:
        code, _, times = action.partition("*")
        _ACTIVE[name] = [getattr(errno, code), int(times or 1)]
_HITS: dict[str, int] = {}


def failpoint(name: str) -> None:
    if not _ACTIVE:
        return
    spec = _ACTIVE.get(name)
    if spec is None:
        return
    _HITS[name] = _HITS.get(name, 0) + 1
    if spec[0] == "crash":
        if _HITS[name] == spec[1]:
            os._exit(137)
    elif spec[0] == "delay":
        time.sleep(spec[1])
    elif spec[0] == "nth":
        if _HITS[name] == spec[2]:
            raise OSError(spec[1], os.strerror(spec[1]))
    elif _HITS[name] <= spec[1]:
        raise OSError(spec[0], os.strerror(spec[0]))
