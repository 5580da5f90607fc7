"""`cilium node list`."""

from __future__ import annotations

import click

from docker_cilium.cli.common import Context, output_option, pass_ctx, show
from docker_cilium.cli.output import table


@click.group()
def node() -> None:
    """Manage cluster nodes"""


@node.command("list")
@output_option
@pass_ctx
def list_(ctx: Context) -> None:
    """List nodes: name, addresses and endpoint (allocation) ranges"""
    status = ctx.client.get("/cluster/nodes")
    show(ctx, status, lambda: table(["Name", "IPv4 Address", "Endpoint CIDR", "IPv6 Address", "Endpoint CIDR"],
                                    [_row(n) for n in sorted(status.get("nodes-added") or [],
                                                             key=lambda n: n.get("name", ""))]))


def _row(node: dict) -> list[str]:
    addr = node.get("primary-address") or {}
    v4, v6 = addr.get("ipv4") or {}, addr.get("ipv6") or {}
    return [node.get("name", ""), v4.get("ip", ""), v4.get("alloc-range", ""),
            v6.get("ip", "") if v6.get("enabled") else "", v6.get("alloc-range", "") if v6.get("enabled") else ""]
