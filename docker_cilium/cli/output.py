"""Table and JSON output shared by every verb (``-o json`` everywhere)."""

from __future__ import annotations

import json
import sys
from typing import Any, Iterable, Sequence

import click


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False))


def print_options(values: dict[str, Any]) -> None:
    """``Key  Value`` lines, sorted by key, as Cilium's ``config`` verbs print options."""
    for key, val in sorted(values.items()):
        click.echo(f"{key:<24}{val}")


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """Tab-aligned columns like Cilium's tabwriter output."""
    rows = [[("" if c is None else str(c)) for c in r] for r in rows]
    # Cells may hold several lines (labels): expand into extra rows.
    expanded: list[list[str]] = []
    for r in rows:
        parts = [c.split("\n") for c in r]
        for i in range(max((len(p) for p in parts), default=1)):
            expanded.append([p[i] if i < len(p) else "" for p in parts])
    widths = [len(h) for h in headers]
    for r in expanded:
        for i, c in enumerate(r):
            widths[i] = max(widths[i], len(c))
    fmt = "   ".join("{:<%d}" % w for w in widths[:-1]) + ("   {}" if len(widths) > 1 else "{}")
    out = [fmt.format(*headers).rstrip()] + [fmt.format(*r).rstrip() for r in expanded]
    sys.stdout.write("\n".join(out) + "\n")
