"""Audit the locked runtime set (requirements/runtime.lock) for known vulnerabilities.

Runs pip-audit against the lock (hashes required, no resolution) and fails on any known
vulnerability.  pip-audit asks PyPI's per-version JSON API (or OSV) for advisories; where that
service cannot be reached (an air-gapped CI machine, a registry proxy that serves only the
package index), every dependency comes back as "could not be audited".  That is reported in one
loud line, never as a pass: with STREAM_APP_REQUIRE_AUDIT=1 (set it on a CI machine that can
reach pypi.org) it fails the run.

Exit codes: 0 audited and clean (or not auditable and not required), 1 vulnerabilities found,
2 not auditable and required.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

LOCK = Path(__file__).resolve().parent.parent / "requirements" / "runtime.lock"


def verdict(report: dict, required: bool) -> tuple[int, list[str]]:
    """pip-audit's JSON report -> (exit code, lines to print)."""
    deps = report.get("dependencies", [])
    vulnerable = [d for d in deps if d.get("vulns")]
    skipped = [d for d in deps if d.get("skip_reason")]
    lines = [f"VULNERABLE  {d['name']} {d.get('version', '')}: {v['id']} (fixed in {', '.join(v.get('fix_versions') or ['-'])})"
             for d in vulnerable for v in d["vulns"]]
    if vulnerable:
        return 1, lines + [f"audit failed: {len(lines)} known vulnerabilities in {len(vulnerable)} locked packages"]
    if skipped:
        message = (f"AUDIT NOT RUN for {len(skipped)} of {len(deps)} locked packages: "
                   f"{skipped[0]['skip_reason']}")
        return (2 if required else 0), [message]
    return 0, [f"audit passed: {len(deps)} locked packages, no known vulnerabilities"]


def main() -> int:
    proc = subprocess.run([sys.executable, "-m", "pip_audit", "--format", "json", "--progress-spinner", "off",
                           "--require-hashes", "--disable-pip", "-r", str(LOCK)],
                          capture_output=True, text=True, timeout=900)
    try:
        report = json.loads(proc.stdout)
    except json.JSONDecodeError:
        print(f"AUDIT NOT RUN: pip-audit failed (exit {proc.returncode}): {proc.stderr.strip()[-500:]}")
        return 2 if os.environ.get("STREAM_APP_REQUIRE_AUDIT") == "1" else 0
    code, lines = verdict(report, os.environ.get("STREAM_APP_REQUIRE_AUDIT") == "1")
    print("\n".join(lines))
    return code


if __name__ == "__main__":
    sys.exit(main())
