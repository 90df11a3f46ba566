"""Reproducible, audited builds: the locks pin every package with hashes, satisfy pyproject's
constraints, and are what .ci/run, the README and the Dockerfile install; the audit fails on a
known vulnerability and never reports an audit it could not run as a pass."""

from __future__ import annotations

import importlib.util
import re
import tomllib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]


def _pins(lock: Path) -> dict[str, str]:
    """name -> version of every pinned line whose environment marker holds here (a universal
    lock pins some packages per Python version or platform); each carries a sha256 hash."""
    text = lock.read_text()
    pins = {}
    for block in re.split(r"\n(?=[A-Za-z0-9])", text):
        head = block.split("\n", 1)[0].rstrip(" \\")
        match = re.match(r"([A-Za-z0-9_.\-]+)==([^ ;]+)\s*(?:;\s*(.+))?$", head)
        if match:
            assert "--hash=sha256:" in block, f"{lock.name}: {head} has no hash"
            if match[3] is None or Marker(match[3]).evaluate():
                pins[canonicalize_name(match[1])] = match[2]
    return pins


def test_the_locks_pin_every_dependency_within_pyprojects_bounds():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime, test = _pins(ROOT / "requirements" / "runtime.lock"), _pins(ROOT / "requirements" / "test.lock")
    extras = project["optional-dependencies"]
    for spec in project["dependencies"] + extras["iso20022"] + extras["msk"]:
        req = Requirement(spec)
        name = canonicalize_name(req.name)
        assert name in runtime and req.specifier.contains(runtime[name]), (spec, runtime.get(name))
        assert test[name] == runtime[name], f"{name}: the test set must test the runtime set's version"
    for spec in project["optional-dependencies"]["test"][1:] + project["optional-dependencies"]["embedded"]:
        req = Requirement(spec)
        assert req.specifier.contains(test[canonicalize_name(req.name)]), spec
    # the Faust stack has upper bounds (aiokafka 0.11 and 0.13 each broke Faust workers)
    bounded = {canonicalize_name(Requirement(s).name): Requirement(s).specifier for s in project["dependencies"]}
    for name in ("faust-streaming", "mode-streaming", "aiokafka"):
        assert any(s.operator == "<" for s in bounded[name]), name


def test_ci_the_readme_and_the_image_install_the_locks():
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert "pip install -q --require-hashes --no-deps -r requirements/test.lock" in ci and "--no-deps -e ." in ci
    assert "pip check" in ci, "a lock installed without resolving is checked complete"
    assert ci in (ROOT / "README.md").read_text(), "the README's test command is .ci/run's"
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "source=requirements/runtime.lock" in dockerfile and "--require-hashes --no-deps -r /tmp/runtime.lock" in dockerfile
    assert "--no-deps" in dockerfile


def test_this_environment_is_the_locked_test_set():
    """What .ci/run installed is exactly the lock (a package outside it, or another version,
    would mean the tests ran on something the lock does not describe)."""
    for name, pinned in _pins(ROOT / "requirements" / "test.lock").items():
        try:
            installed = version(name)
        except PackageNotFoundError:
            continue  # a platform-conditional pin (markers) this machine does not need
        assert canonicalize_name(name) and installed == pinned, f"{name}: installed {installed}, locked {pinned}"


def _audit():
    spec = importlib.util.spec_from_file_location("ci_audit", ROOT / ".ci" / "audit.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_audit_fails_on_a_known_vulnerability_and_never_passes_an_audit_it_could_not_run():
    audit = _audit()
    clean = {"dependencies": [{"name": "jinja2", "version": "3.1.6", "vulns": []}], "fixes": []}
    assert audit.verdict(clean, required=True)[0] == 0
    vulnerable = {"dependencies": [{"name": "jinja2", "version": "3.1.4", "vulns": [
        {"id": "GHSA-q2x7-8rv6-6q7h", "fix_versions": ["3.1.5"], "aliases": ["CVE-2024-56201"]}]}]}
    code, lines = audit.verdict(vulnerable, required=False)
    assert code == 1 and "GHSA-q2x7-8rv6-6q7h" in lines[0] and "3.1.5" in lines[0]
    unreachable = {"dependencies": [{"name": "jinja2", "skip_reason": "Dependency not found on PyPI"}]}
    code, lines = audit.verdict(unreachable, required=True)
    assert code == 2 and lines[0].startswith("AUDIT NOT RUN")
    code, lines = audit.verdict(unreachable, required=False)
    assert code == 0 and lines[0].startswith("AUDIT NOT RUN")  # said, never "passed"
