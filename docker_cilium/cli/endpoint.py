"""`cilium endpoint ...`"""

from __future__ import annotations

import click

from docker_cilium.cli.common import Context, output_option, parse_options, pass_ctx, show
from docker_cilium.cli.output import emit_json, print_options, table
from docker_cilium.identity.reserved import INIT_LABEL


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
def list_(ctx: Context) -> None:
    """List all endpoints"""
    eps = ctx.client.get("/endpoint")
    show(ctx, eps, lambda: table(["ENDPOINT", "POLICY (ingress) ENFORCEMENT", "POLICY (egress) ENFORCEMENT",
                                  "IDENTITY", "LABELS (source:key[=value])", "IPv6", "IPv4", "STATUS"],
                                 [_row(ep) for ep in eps]))


def _row(ep: dict) -> list:
    labels = ep["labels"].get("effective", ep["labels"]["orchestration-identity"]) or [INIT_LABEL]
    return [ep["id"], _enforcement(ep, "ingress"), _enforcement(ep, "egress"), ep["identity"]["id"],
            "\n".join(labels), ep["addressing"]["ipv6"], ep["addressing"]["ipv4"], ep["state"]]


@endpoint.command("get")
@click.argument("endpoint_id")
@output_option
@pass_ctx
def get(ctx: Context, endpoint_id: str) -> None:
    """Display endpoint information (ID, or container-id:, container-name:, docker-endpoint:)"""
    emit_json(ctx.client.get(f"/endpoint/{endpoint_id}"))


def _labels_table(labels: dict) -> None:
    disabled = set(labels.get("disabled") or [])
    rows = [[lbl, "Orchestration-Identity" + (" (disabled)" if lbl in disabled else "")]
            for lbl in labels.get("orchestration-identity") or []]
    rows += [[lbl, "User"] for lbl in labels.get("user") or []]
    table(["LABEL", "SOURCE"], rows)


@endpoint.command("labels")
@click.argument("endpoint_id")
@click.option("-a", "--add", multiple=True, metavar="LABEL", help="Label to add")
@click.option("-d", "--delete", multiple=True, metavar="LABEL", help="Label to delete")
@output_option
@pass_ctx
def labels(ctx: Context, endpoint_id: str, add: tuple[str, ...], delete: tuple[str, ...]) -> None:
    """Show or change an endpoint's labels (its identity follows)"""
    if add or delete:
        reply = ctx.client.request("PATCH", f"/endpoint/{endpoint_id}/labels",
                                   body={"add": list(add), "delete": list(delete)})
    else:
        reply = ctx.client.get(f"/endpoint/{endpoint_id}/labels")
    show(ctx, reply, lambda: _labels_table(reply))


@endpoint.command("config")
@click.argument("endpoint_id")
@click.argument("options", nargs=-1, metavar="[Key=Value]...")
@output_option
@pass_ctx
def config(ctx: Context, endpoint_id: str, options: tuple[str, ...]) -> None:
    """View or change an endpoint's options (PolicyEnforcement=default|always|never)"""
    changes = parse_options(options)
    if changes:
        reply = ctx.client.request("PATCH", f"/endpoint/{endpoint_id}/config", body=changes)
        if ctx.output != "json":
            click.echo(f"Endpoint {endpoint_id} configuration updated successfully")
            return
    else:
        reply = ctx.client.get(f"/endpoint/{endpoint_id}/config")
    show(ctx, reply, lambda: print_options(reply))


@endpoint.command("log")
@click.argument("endpoint_id")
@output_option
@pass_ctx
def log(ctx: Context, endpoint_id: str) -> None:
    """View an endpoint's status log (state transitions and regenerations, with reasons)"""
    entries = ctx.client.get(f"/endpoint/{endpoint_id}/log")
    show(ctx, entries, lambda: table(["Timestamp", "Status", "State", "Message"],
                                     [[e["timestamp"], e["code"], e["state"], e["message"]] for e in entries]))


@endpoint.command("regenerate")
@click.argument("endpoint_id")
@output_option
@pass_ctx
def regenerate(ctx: Context, endpoint_id: str) -> None:
    """Force regeneration of an endpoint (maps from the current policy, programs attached again)"""
    reply = ctx.client.request("PATCH", f"/endpoint/{endpoint_id}/config", body={})
    show(ctx, reply, lambda: click.echo(f"Endpoint {endpoint_id} successfully regenerated"))


@endpoint.command("disconnect")
@click.argument("endpoint_id")
@output_option
@pass_ctx
def disconnect(ctx: Context, endpoint_id: str) -> None:
    """Disconnect an endpoint from the network"""
    reply = ctx.client.request("DELETE", f"/endpoint/{endpoint_id}")
    show(ctx, reply, lambda: click.echo(f"Endpoint {endpoint_id} successfully disconnected"))
