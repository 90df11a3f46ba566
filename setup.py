"""The per-record hot path, compiled to C with mypyc (docs/performance.md, "The hot path compiled").

The modules in ``stream_app/ops/hotpath.py`` are plain typed Python, checked by mypy like the
rest; mypyc compiles them to extension modules that sit beside their sources and are imported
instead, with the same behaviour and output (the golden-file and byte-identity tests run on the
compiled build; tests/ops/test_hotpath.py holds the pure sources to the same bytes).
``STREAM_APP_PURE_PYTHON=1`` builds without compiling: no C compiler needed, and structured
files cost about a third more CPU.  Everything else is configured in pyproject.toml.
"""

from __future__ import annotations

import os
import runpy

from setuptools import setup

if os.environ.get("STREAM_APP_PURE_PYTHON", "") in ("", "0"):
    from mypyc.build import mypycify

    # the file itself, not the package: its dependencies need not be installed to build
    hot_sources = runpy.run_path("stream_app/ops/hotpath.py")["source_paths"]()
    setup(ext_modules=mypycify(hot_sources, opt_level="3", group_name="stream_app_hotpath"))
else:
    setup()
