"""What several benchmarks share: their command line, a private bpffs root,
and the CONTRACT15 figures they print for `make bench`'s report.

Each benchmark repeats a measurement ``--rounds`` times for ``--seconds``;
the ones that drive the agent through dockerd also take the CLI's path.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import statistics
from typing import Any, Callable, Sequence

from docker_cilium import defaults


def round_args(doc: str | None, cilium: bool = False) -> argparse.Namespace:
    """Parse ``--rounds``/``--seconds`` (and ``--cilium`` when asked)."""
    ap = argparse.ArgumentParser(description=doc)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    if cilium:
        ap.add_argument("--cilium", default="cilium", help="path of the cilium CLI")
    return ap.parse_args()


def private_bpf_base() -> str:
    """A bpffs directory of this run alone, so that its pins never meet the
    agent's (or another benchmark's) maps."""
    return os.path.join(defaults.BPFFS_ROOT, f"dcbench-{os.getpid()}-{random.randrange(1 << 30):x}")


# ------------------------------------------------------------------ figures
# CONTRACT15: each module's JSON carries "figures" (one report row each) and
# optionally "series" (one chart each); bench/report.py renders them.

_GOAL = re.compile(r"^\s*(<=|>=|<|>)\s*([0-9.]+)")
_OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": lambda v, g: v <= g, ">=": lambda v, g: v >= g, "<": lambda v, g: v < g, ">": lambda v, g: v > g}


def goal_met(value: float | None, goal: str | None) -> bool | None:
    """Whether ``value`` meets ``goal`` as the issue writes it ("<= 5 ms",
    ">= 0.95x veth"): the comparison and the number lead the text, so the
    verdict comes from the measured number, never from the module's say-so."""
    if goal is None or value is None:
        return None
    m = _GOAL.match(goal)
    if m is None:
        raise ValueError(f"goal {goal!r}: expected '<=|>=|<|> NUMBER ...'")
    return _OPS[m.group(1)](value, float(m.group(2)))


def spread(values: Sequence[float], unit: str = "", digits: int = 2) -> str:
    """``median (min-max)`` of one side's rounds, the report's absolute column."""
    med = statistics.median(values)
    u = f" {unit}" if unit else ""
    return f"{med:.{digits}f}{u} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def figure(name: str, value: float, unit: str, *, goal: str | None = None, baseline: str | None = None,
           absolute: str | None = None, rounds: Sequence[float] | None = None, digits: int = 3) -> dict[str, Any]:
    """One CONTRACT15 figure. A figure with a ``baseline`` is a ratio
    (``value`` is value/baseline, unit "x"); ``rounds`` are the value's
    samples (per-round ratios or per-run times) for its min-max."""
    v = round(value, digits)
    return {"name": name, "value": v, "unit": unit, "goal": goal, "met": goal_met(value, goal),
            "baseline": baseline, "ratio": v if baseline else None, "absolute": absolute,
            "min": round(min(rounds), digits) if rounds else None,
            "max": round(max(rounds), digits) if rounds else None}


def ratios(a: Sequence[float], b: Sequence[float]) -> list[float]:
    """Per-round a/b of interleaved rounds (round i of a beside round i of b)."""
    return [x / y for x, y in zip(a, b) if y]
