"""The package's layout is its architecture: what each layer may import.

* ``core/`` is pure Python: no Kafka client, no Faust, nothing of the package outside ``core/``;
* ``pipeline/`` (the stages and the committer live and replay share) imports no Kafka client
  and no Faust: the drivers hand it records and ports;
* ``delivery/`` (the outbox's worker and the SFTP client) imports no Kafka client and no
  Faust: the live runtime hands it the outbox and the partitions it owns;
* only ``live/`` imports Faust.
"""

from __future__ import annotations

import ast
from pathlib import Path

import stream_app

PACKAGE = Path(stream_app.__file__).parent
KAFKA = ("faust", "mode", "aiokafka", "confluent_kafka", "kafka")


def imports(path: Path) -> set[str]:
    """Every module a file imports, at any depth (also inside functions)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
    return found


def offending(layer: str, forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    bad: dict[str, list[str]] = {}
    for path in sorted((PACKAGE / layer).rglob("*.py")):
        hits = sorted(m for m in imports(path) if m.split(".")[0] in forbidden or
                      any(m == f or m.startswith(f + ".") for f in forbidden))
        if hits:
            bad[str(path.relative_to(PACKAGE))] = hits
    return bad


def test_core_imports_no_kafka_no_faust_and_nothing_outside_core():
    assert offending("core", KAFKA) == {}
    outside = {}
    for path in sorted((PACKAGE / "core").rglob("*.py")):
        hits = sorted(m for m in imports(path) if m.startswith("stream_app.") and not m.startswith("stream_app.core"))
        if hits:
            outside[str(path.relative_to(PACKAGE))] = hits
    assert outside == {}


def test_the_pipeline_imports_no_kafka_client_and_no_faust():
    assert offending("pipeline", KAFKA) == {}


def test_delivery_imports_no_kafka_client_and_no_faust():
    assert offending("delivery", KAFKA) == {}


def test_only_live_imports_faust():
    users = {str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
             if any(m == "faust" or m.startswith(("faust.", "mode.")) or m == "mode" for m in imports(p))}
    assert users and all(u.startswith("live/") for u in users), sorted(users)


def test_the_layout_has_the_layers_the_docs_name():
    for layer in ("core", "codecs", "pipeline", "sinks", "delivery", "live", "replay", "tools", "ops"):
        assert (PACKAGE / layer / "__init__.py").is_file() or (PACKAGE / layer).is_dir(), layer
    loose = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert loose == ["__init__.py", "cli.py", "config.py"], loose


def test_no_module_or_class_is_longer_than_its_budget_without_a_reason_at_its_top():
    """About 400 lines per module and 250 per class (10% slack), or a reason in the module's
    docstring that says why it is longer."""
    unexplained = []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = path.read_text(encoding="utf-8")
        tree = ast.parse(source)
        reason = "longer than" in (ast.get_docstring(tree) or "").lower()
        if len(source.splitlines()) > 440 and not reason:
            unexplained.append(f"{path.relative_to(PACKAGE)}: {len(source.splitlines())} lines")
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > 275 and not reason:
                unexplained.append(f"{path.relative_to(PACKAGE)}: class {node.name}")
    assert unexplained == []
