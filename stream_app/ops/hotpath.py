"""The per-record modules that setup.py compiles with mypyc, and whether this build runs them compiled.

Only the standard library is imported here: setup.py runs this file for ``source_paths()``
before the package's dependencies are installed.
"""

from __future__ import annotations

import importlib
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

# Run per record by the file stage, replay and the decode helper; none imports Kafka.  Classes in
# them cannot be patched or subclassed from Python once compiled: tests observe them from outside.
HOT_MODULES = (
    "stream_app.codecs.avro",
    "stream_app.codecs.carried",
    "stream_app.core.decimals",
    "stream_app.core.records",
    "stream_app.core.formats.xml",
    "stream_app.core.structured.aggregates",
    "stream_app.core.structured.expressions",
    "stream_app.core.structured.project",
)


def source_paths() -> list[str]:
    """The modules' sources relative to the project root, as mypyc takes them."""
    return [name.replace(".", "/") + ".py" for name in HOT_MODULES]


def compiled_modules() -> list[str]:
    """The hot modules this interpreter imports as extension modules."""
    return [name for name in HOT_MODULES
            if str(importlib.import_module(name).__file__).endswith(tuple(EXTENSION_SUFFIXES))]


def describe() -> str:
    compiled = len(compiled_modules())
    if compiled == len(HOT_MODULES):
        return "compiled (mypyc)"
    if compiled == 0:
        return "pure Python"
    return f"partly compiled ({compiled} of {len(HOT_MODULES)} modules)"


def stale_extensions(package_dir: Path) -> list[str]:
    """Extension modules in a source tree that are older than their source: built before the
    source was last edited, they would run the old code (an editable install builds them in place)."""
    stale = []
    for built in package_dir.rglob("*.so"):
        source = built.with_name(built.name.split(".", 1)[0] + ".py")
        if source.exists() and source.stat().st_mtime > built.stat().st_mtime:
            stale.append(str(source.relative_to(package_dir.parent)))
    return sorted(stale)
