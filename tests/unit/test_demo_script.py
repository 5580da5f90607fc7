"""scripts/demo.sh's helpers, run by bash on their own (no agent, no dockerd)."""

from __future__ import annotations

import subprocess

from tests.helpers import ROOT

DEMO = ROOT / "scripts" / "demo.sh"


def _demo_function(name: str) -> str:
    """The text of one top-level function of demo.sh (from ``name() {`` to its ``}``)."""
    lines = DEMO.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"{name}() {{"))
    if lines[start].rstrip().endswith("}"):  # one-line function
        return lines[start]
    end = next(i for i in range(start, len(lines)) if lines[i] == "}")
    return "\n".join(lines[start:end + 1])


def test_wait_for_timeout_names_the_seconds_and_what():
    script = "\n".join([_demo_function("die"), _demo_function("wait_for"), "wait_for 0 'the thing' false"])
    res = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=10)
    assert res.returncode == 1
    assert res.stderr.strip() == "demo: timed out after 0 s waiting for the thing"
