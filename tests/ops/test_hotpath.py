"""The compiled hot path (setup.py, mypyc): the suite runs it, and the pure sources give the same
files and the same refusals."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stream_app.ops.hotpath import HOT_MODULES, compiled_modules, describe, source_paths, stale_extensions
from tests.ops.same_bytes import run

ROOT = Path(__file__).resolve().parents[2]


def test_the_suite_runs_the_compiled_hot_path():
    if os.environ.get("STREAM_APP_PURE_PYTHON", "") not in ("", "0"):
        pytest.skip("installed with STREAM_APP_PURE_PYTHON")
    assert compiled_modules() == list(HOT_MODULES), "rebuild: .venv/bin/pip install --no-deps -e ."
    assert describe() == "compiled (mypyc)"
    assert all((ROOT / path).is_file() for path in source_paths())


def test_the_pure_sources_write_the_same_files_and_report_the_same_errors(tmp_path):
    pure_tree = tmp_path / "pure"
    shutil.copytree(ROOT / "stream_app", pure_tree / "stream_app", ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    shutil.copy(Path(__file__).with_name("same_bytes.py"), pure_tree)
    done = subprocess.run([sys.executable, "same_bytes.py"], cwd=pure_tree, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(pure_tree)}, timeout=300)
    assert done.returncode == 0, done.stderr
    pure = json.loads(done.stdout)
    here = run()
    assert pure["build"] == "pure Python" and here["build"] == describe()
    assert len(here["written"]) >= 14 and len(here["refused"]) >= 25  # every shipped pack wrote and refused
    assert pure["written"] == here["written"]
    assert pure["refused"] == here["refused"]


def test_an_extension_older_than_its_source_is_reported(tmp_path):
    package = tmp_path / "stream_app"
    (package / "core").mkdir(parents=True)
    for name in ("fresh", "edited"):
        (package / "core" / f"{name}.py").write_text("")
        (package / "core" / f"{name}.cpython-311-x86_64-linux-gnu.so").write_bytes(b"")
    (package / "core" / "plain.py").write_text("")
    later = time.time() + 5
    os.utime(package / "core" / "edited.py", (later, later))
    assert stale_extensions(package) == ["stream_app/core/edited.py"]


def _handler_names(function: ast.AST) -> dict[str, set[str]]:
    """Each ``except ... as NAME`` of one function (not of functions nested in it): its types."""
    names: dict[str, set[str]] = {}
    pending = list(ast.iter_child_nodes(function))
    while pending:
        node = pending.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            continue
        if isinstance(node, ast.ExceptHandler) and node.name:
            names.setdefault(node.name, set()).add(ast.unparse(node.type) if node.type else "")
        pending.extend(ast.iter_child_nodes(node))
    return names


def test_no_compiled_function_names_two_kinds_of_exception_alike():
    """mypyc gives ``except A as exc`` and a later ``except B as exc`` one variable of type A, so
    catching a B raised TypeError instead (found by test_properties on convert_plain)."""
    shared = []
    for path in source_paths():
        for node in ast.walk(ast.parse((ROOT / path).read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                shared += [f"{path}:{node.lineno} {node.name}: {name}" for name, kinds in _handler_names(node).items()
                           if len(kinds) > 1]
    assert not shared
