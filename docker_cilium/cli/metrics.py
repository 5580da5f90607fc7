"""`cilium metrics list`: the agent's metrics through its API (GET /v1/metrics/)."""

from __future__ import annotations

import re

import click

from docker_cilium.cli.common import Context, output_option, pass_ctx
from docker_cilium.cli.output import emit_json, table


@click.group()
def metrics() -> None:
    """Access metric status"""


@metrics.command("list")
@click.option("-p", "--match-pattern", default="", help="Show only metrics whose names match this regex")
@output_option
@pass_ctx
def list_(ctx: Context, match_pattern: str) -> None:
    """List all metrics"""
    try:
        pattern = re.compile(match_pattern)
    except re.error as exc:
        raise click.BadParameter(f"{match_pattern!r}: {exc}", param_hint="--match-pattern") from None
    found = [m for m in ctx.client.get("/metrics/") if pattern.search(m["name"])]
    if ctx.output == "json":
        emit_json(found)
        return
    rows = [[m["name"], " ".join(f"{k}={v}" for k, v in sorted(m["labels"].items())), f"{m['value']:f}"]
            for m in sorted(found, key=lambda m: (m["name"], sorted(m["labels"].items())))]
    table(["Metric", "Labels", "Value"], rows)
