"""`cilium node list`."""

from __future__ import annotations

import click

from docker_cilium.cli.common import Context, api_call, output_option, pass_ctx
from docker_cilium.cli.output import emit_json, table


@click.group()
def node() -> None:
    """Manage cluster nodes"""


@node.command("list")
@output_option
@pass_ctx
@api_call
def list_(ctx: Context) -> None:
    """List nodes: name, addresses and endpoint (allocation) ranges"""
    status = ctx.client.get("/cluster/nodes")
    if ctx.output == "json":
        emit_json(status)
        return
    rows = []
    for n in sorted(status.get("nodes-added") or [], key=lambda n: n.get("name", "")):
        addr = n.get("primary-address") or {}
        v4, v6 = addr.get("ipv4") or {}, addr.get("ipv6") or {}
        rows.append([n.get("name", ""), v4.get("ip", ""), v4.get("alloc-range", ""),
                     v6.get("ip", "") if v6.get("enabled") else "",
                     v6.get("alloc-range", "") if v6.get("enabled") else ""])
    table(["Name", "IPv4 Address", "Endpoint CIDR", "IPv6 Address", "Endpoint CIDR"], rows)
