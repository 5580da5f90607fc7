"""`cilium map list [--verbose]` and `cilium map get NAME` (through the agent API)."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import click

from docker_cilium.cli.common import Context, output_option, pass_ctx, show
from docker_cilium.cli.output import table


def _text(data: Any) -> str:
    """A decoded key or value on one line: ``field=value ...``; per-CPU values as ``cpuN: ...``."""
    if isinstance(data, dict):
        return " ".join(f"{k}={_text(v)}" for k, v in data.items())
    if isinstance(data, list):
        return " | ".join(f"cpu{i}: {_text(v)}" for i, v in enumerate(data))
    return str(data)


def _entries(m: dict) -> None:
    table(["Key", "Value"], [[_text(e["key"]), _text(e["value"]) if "value" in e else "(kernel object)"]
                             for e in m["cache"]])


@click.group("map")
def map_() -> None:
    """Access userspace cached content of BPF maps"""


@map_.command("list")
@click.option("--verbose", is_flag=True, help="Print every map's entries too")
@output_option
@pass_ctx
def list_(ctx: Context, verbose: bool) -> None:
    """List all open BPF maps"""
    maps = ctx.client.get("/map")["maps"]
    if verbose:
        maps = [ctx.client.get(f"/map/{quote(m['name'], safe='')}") for m in maps]
    show(ctx, maps, lambda: _with_entries(maps) if verbose else table(
        ["Name", "Type", "Num entries", "Max entries"],
        [[m["name"], m["type"], m["entries"], m["max-entries"]] for m in maps]))


def _with_entries(maps: list[dict]) -> None:
    for i, m in enumerate(maps):
        if i:
            click.echo()
        click.echo(f"## Map: {m['name']} ({m['type']}, {m['entries']}/{m['max-entries']} entries)")
        _entries(m)


@map_.command("get")
@click.argument("name")
@output_option
@pass_ctx
def get(ctx: Context, name: str) -> None:
    """Display cached content of given BPF map"""
    m = ctx.client.get(f"/map/{quote(name, safe='')}")
    show(ctx, m, lambda: _entries(m))
