"""The per-record hot path, compiled to C with mypyc (docs/performance.md, "The hot path compiled").

The modules in ``stream_app/ops/hotpath.py`` are plain typed Python, checked by mypy like the
rest; mypyc compiles them to extension modules that sit beside their sources and are imported
instead, with the same behaviour and output (the golden-file and byte-identity tests run on the
compiled build; tests/ops/test_hotpath.py holds the pure sources to the same bytes).

- ``STREAM_APP_PURE_PYTHON=1`` builds without compiling.
- Without a working C compiler the package installs as pure Python, with a warning: the same
  files, at about a third more CPU in structured mode (the worker logs which build it runs).
  ``STREAM_APP_REQUIRE_COMPILED=1`` (the image's build) makes that an error instead.

Everything else is configured in pyproject.toml.
"""

from __future__ import annotations

import os
import runpy
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext


def _flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0")


class OptionalBuildExt(build_ext):
    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # no compiler, or it failed: compiler errors have no common base
            if _flag("STREAM_APP_REQUIRE_COMPILED"):
                raise
            # The modules import one shared library: keep none of them unless all were built.
            for output in self.get_outputs():
                Path(output).unlink(missing_ok=True)
            self.warn(f"compiling the hot path failed ({exc}); installing it as pure Python "
                      "(the same files, more CPU per record)")


if _flag("STREAM_APP_PURE_PYTHON"):
    setup()
else:
    from mypyc.build import mypycify

    # the file itself, not the package: its dependencies need not be installed to build
    hot_sources = runpy.run_path("stream_app/ops/hotpath.py")["source_paths"]()
    setup(ext_modules=mypycify(hot_sources, opt_level="3", group_name="stream_app_hotpath"),
          cmdclass={"build_ext": OptionalBuildExt})
