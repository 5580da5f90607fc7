"""`cilium service ...`: update, list, get, delete (Cilium's verbs and output)."""

from __future__ import annotations

from typing import Any

import click

from docker_cilium.cli.common import Context, output_option, pass_ctx, show
from docker_cilium.cli.output import table
from docker_cilium.errors import NotFound
from docker_cilium.service.model import MAX_SERVICE_ID, parse_addr


def _addr(a: dict[str, Any]) -> str:
    return f"[{a['ip']}]:{a['port']}" if ":" in a["ip"] else f"{a['ip']}:{a['port']}"


def _spec(svc_id: int, frontend: str, backends: tuple[str, ...], protocol: str) -> dict[str, Any]:
    try:
        ip, port = parse_addr(frontend, "--frontend")
        bes = [parse_addr(b, "--backends") for arg in backends for b in arg.split(",") if b.strip()]
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    return {"id": svc_id, "frontend-address": {"ip": ip, "port": port, "protocol": protocol.upper()},
            "backend-addresses": [{"ip": b_ip, "port": b_port, "weight": 1} for b_ip, b_port in bes]}


@click.group()
def service() -> None:
    """Manage services & loadbalancers"""


@service.command("update")
@click.option("--id", "svc_id", default=0, type=click.IntRange(0, MAX_SERVICE_ID),
              help="Identifier (none or 0: the frontend's own, else the agent allocates one)")
@click.option("--frontend", required=True, help="Frontend address, IP:PORT or [IPv6]:PORT")
@click.option("--backends", multiple=True, help="Backend address or addresses (IP:PORT,IP:PORT,...)")
@click.option("--protocol", default="TCP", type=click.Choice(["TCP", "UDP"], case_sensitive=False),
              help="Protocol for service (e.g. TCP, UDP)")
@output_option
@pass_ctx
def update(ctx: Context, svc_id: int, frontend: str, backends: tuple[str, ...], protocol: str) -> None:
    """Update a service"""
    spec = _spec(svc_id, frontend, backends, protocol)
    if svc_id:
        try:
            ctx.client.get(f"/service/{svc_id}")
            exists = True
        except NotFound:
            exists = False
    else:  # the agent picks the ID: the frontend's, if it is a service already
        fe = spec["frontend-address"]
        held = [m["spec"]["id"] for m in ctx.client.get("/service")
                if _addr(m["spec"]["frontend-address"]) == _addr(fe)
                and m["spec"]["frontend-address"]["protocol"] == fe["protocol"]]
        exists, svc_id = bool(held), (held[0] if held else 0)
        spec["id"] = svc_id
    if ctx.output != "json":
        click.echo(f"Updating existing service with id '{svc_id}'" if exists else
                   f"Creating new service with id '{svc_id}'" if svc_id else "Creating new service")
    reply = ctx.client.request("PUT", f"/service/{svc_id}", body=spec)
    n = len(spec["backend-addresses"])
    added = f"Added service with id '{reply['spec']['id']}' and {n} backends" if not svc_id else \
        f"Added service with {n} backends"
    show(ctx, reply, lambda: click.echo(f"Updated service with {n} backends" if exists else added))


def _rows(models: list[dict[str, Any]]) -> list[list[str]]:
    rows = []
    for m in models:
        spec = m["spec"]
        backends = "\n".join(f"{i} => {_addr(b)} ({b.get('state', 'active')})"
                             for i, b in enumerate(spec["backend-addresses"], start=1))
        rows.append([str(spec["id"]), f"{_addr(spec['frontend-address'])}/{spec['frontend-address']['protocol']}",
                     spec.get("flags", {}).get("type", "ClusterIP"), backends])
    return rows


@service.command("list")
@output_option
@pass_ctx
def list_(ctx: Context) -> None:
    """List services"""
    models = ctx.client.get("/service")
    show(ctx, models, lambda: table(["ID", "Frontend", "Service Type", "Backend"], _rows(models)))


@service.command("get")
@click.argument("svc_id", metavar="<service id>", type=click.IntRange(1, MAX_SERVICE_ID))
@output_option
@pass_ctx
def get(ctx: Context, svc_id: int) -> None:
    """Display service information"""
    model = ctx.client.get(f"/service/{svc_id}")

    def text() -> None:
        spec = model["spec"]
        click.echo(f"{_addr(spec['frontend-address'])}/{spec['frontend-address']['protocol']} =>")
        for i, b in enumerate(spec["backend-addresses"], start=1):
            click.echo(f"\t\t{i} => {_addr(b)} ({spec['id']})")

    show(ctx, model, text)


@service.command("delete")
@click.argument("svc_id", metavar="<service id>", required=False, type=click.IntRange(1, MAX_SERVICE_ID))
@click.option("--all", "all_", is_flag=True, help="Delete all services")
@pass_ctx
def delete(ctx: Context, svc_id: int | None, all_: bool) -> None:
    """Delete a service"""
    if (svc_id is None) == (not all_):
        raise click.UsageError("give a service ID or --all (not both)")
    ids = [m["spec"]["id"] for m in ctx.client.get("/service")] if all_ else [svc_id]
    for i in ids:
        ctx.client.request("DELETE", f"/service/{i}")
        click.echo(f"Service {i} deleted successfully")
