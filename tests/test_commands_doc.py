"""docs/commands.md documents every command of ``stream-app --help`` with examples that work."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from stream_app.cli import main

ROOT = Path(__file__).resolve().parent.parent
DOC = (ROOT / "docs" / "commands.md").read_text(encoding="utf-8")


def sections() -> dict[str, str]:
    """command -> the bash block of its section."""
    found = {}
    for name, body in re.findall(r"^## `stream-app ([a-z-]+)`\n(.*?)(?=^## |\Z)", DOC, re.M | re.S):
        blocks = re.findall(r"```bash\n(.*?)```", body, re.S)
        assert len(blocks) == 1, name
        found[name] = blocks[0]
    return found


def invocations(block: str) -> list[tuple[dict[str, str], list[str]]]:
    calls = []
    for line in block.strip().splitlines():
        words = shlex.split(line)
        env = {}
        while words and re.fullmatch(r"[A-Z_]+=.*", words[0]):
            key, value = words.pop(0).split("=", 1)
            env[key] = value
        if words[0] == "stream-app":
            calls.append((env, words[1:]))
    return calls


def test_every_command_has_a_section_and_its_examples_parse():
    documented = sections()
    assert set(documented) == set(main.commands), set(main.commands) ^ set(documented)
    for name, block in documented.items():
        calls = invocations(block)
        assert calls, name
        for _, args in calls:
            assert args[0] == name, (name, args)
            command = main.commands[name]
            with command.make_context(name, args[1:]) as ctx:  # unknown options or bad values raise
                assert ctx.params


def test_the_offline_examples_run():
    bin_dir = Path(sys.executable).parent
    for name in ("preflight", "config"):
        block = sections()[name]
        result = subprocess.run(["bash", "-e", "-c", block], cwd=ROOT, capture_output=True, text=True, timeout=120,
                                env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"})
        assert result.returncode == 0, (name, result.stdout, result.stderr)
    assert "ok  sink is writable" in subprocess.run(
        ["bash", "-e", "-c", sections()["preflight"]], cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}).stdout
