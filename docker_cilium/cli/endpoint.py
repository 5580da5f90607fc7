"""`cilium endpoint ...`"""

from __future__ import annotations

import click

from docker_cilium.cli.common import Context, api_call, output_option, pass_ctx
from docker_cilium.cli.output import emit_json, table


def _enforcement(ep: dict, direction: str) -> str:
    pol = ep.get("policy") or {}
    val = pol.get(f"{direction}-enforced")
    if val is None:
        return "Disabled"
    return "Enabled" if val else "Disabled"


@click.group()
def endpoint() -> None:
    """Manage endpoints"""


@endpoint.command("list")
@output_option
@pass_ctx
@api_call
def list_(ctx: Context) -> None:
    """List all endpoints"""
    eps = ctx.client.get("/endpoint")
    if ctx.output == "json":
        emit_json(eps)
        return
    rows = []
    for ep in eps:
        labels = ep["labels"]["orchestration-identity"] or ["reserved:init"]
        rows.append([
            ep["id"], _enforcement(ep, "ingress"), _enforcement(ep, "egress"), ep["identity"]["id"],
            "\n".join(labels), ep["addressing"]["ipv6"], ep["addressing"]["ipv4"], ep["state"],
        ])
    table(["ENDPOINT", "POLICY (ingress) ENFORCEMENT", "POLICY (egress) ENFORCEMENT", "IDENTITY",
           "LABELS (source:key[=value])", "IPv6", "IPv4", "STATUS"], rows)


@endpoint.command("get")
@click.argument("endpoint_id")
@output_option
@pass_ctx
@api_call
def get(ctx: Context, endpoint_id: str) -> None:
    """Display endpoint information (ID, or container-id:, container-name:, docker-endpoint:)"""
    emit_json(ctx.client.get(f"/endpoint/{endpoint_id}"))
