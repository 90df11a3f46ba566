"""The built wheel works on its own: installed into a fresh venv outside the checkout, it runs the
demo (a worker against the embedded broker) and preflights every shipped example.

Only the distribution under test is installed into the fresh venv; its dependencies are borrowed
from the test environment through a path entry, whose ``.pth`` files (this checkout's editable
install among them) are not processed, so nothing of the source tree can be imported.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


def _run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 300) -> str:
    done = subprocess.run(cmd, cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, f"{cmd}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    work = tmp_path_factory.mktemp("wheel")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(work), str(ROOT)],
         cwd=work)
    (wheel,) = work.glob("stream_app-*.whl")
    venv = work / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], cwd=work)
    _run([str(venv / "bin" / "pip"), "install", "-q", "--no-deps", "--no-index", str(wheel)], cwd=work)
    site = Path(_run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                     cwd=work).strip())
    # Appended after the venv's own site-packages: dependencies only, the installed wheel wins.
    (site / "zz_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv, work


def test_installed_package_reads_only_its_own_files(installed):
    venv, work = installed
    where = _run([str(venv / "bin" / "python"), "-c",
                  "import stream_app, stream_app.resources as r; print(stream_app.__file__); print(r.AVRO_DIR)"],
                 cwd=work).split()
    assert all(str(venv) in line and str(ROOT) not in line for line in where)
    # the wheel carries the compiled hot path (setup.py), which the demo below runs
    build = _run([str(venv / "bin" / "python"), "-c", "from stream_app.ops.hotpath import describe; print(describe())"],
                 cwd=work).strip()
    assert build == "compiled (mypyc)"


def test_every_example_preflights_from_the_wheel(installed, tmp_path):
    venv, work = installed
    examples = Path(_run([str(venv / "bin" / "python"), "-c",
                          "import stream_app.resources as r; print(r.EXAMPLES_DIR)"], cwd=work).strip())
    names = sorted(p.name for p in examples.glob("*.yaml"))
    assert names == sorted(p.name for p in (ROOT / "examples").glob("*.yaml"))
    env = {"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9", "CLEARING_OUT_DIR": str(tmp_path)}
    for name in names:
        _run([str(venv / "bin" / "stream-app"), "preflight", "--config", str(examples / name)], cwd=work, env=env)


def test_demo_runs_a_worker_from_the_wheel(installed):
    venv, work = installed
    out = work / "demo-out"
    env = {"KAFKA_BOOTSTRAP_SERVERS": ""}
    printed = _run([str(venv / "bin" / "stream-app"), "demo", "--records", "300", "--out", str(out),
                    "--example", "pcs-clearing"], cwd=work, env=env)
    assert "300 records" in printed, printed
    files = sorted(out.glob("*.xml"))
    assert files and all(f.read_bytes().startswith(b"<?xml") for f in files)


def test_without_a_c_compiler_the_wheel_installs_pure_python(tmp_path):
    """setup.py falls back to the pure sources when the hot path cannot be compiled: the same
    package, the demo's first command still works on a machine without a C compiler."""
    import zipfile

    # the checkout's tracked files only: its build/ holds the compiled modules of the editable install
    source = tmp_path / "source"
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in filter(None, tracked.decode().split("\0")):
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        if (ROOT / name).is_symlink():  # stream_app/resources links to the top-level directories
            (source / name).symlink_to(os.readlink(ROOT / name))
        elif (ROOT / name).is_file():
            shutil.copy2(ROOT / name, source / name)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(source)], cwd=tmp_path,
         env={"CC": "false"})
    (wheel,) = tmp_path.glob("stream_app-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "stream_app/core/structured/project.py" in names and "stream_app/ops/hotpath.py" in names
    assert not [n for n in names if n.endswith(".so")], "no extension module, not even a partial set"

