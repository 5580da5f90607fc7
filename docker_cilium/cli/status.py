"""`cilium status`, `cilium config`, `cilium version`."""

from __future__ import annotations

import click

from docker_cilium import __version__
from docker_cilium.cli.common import Context, api_call, output_option, parse_options, pass_ctx
from docker_cilium.cli.output import emit_json
from docker_cilium.monitor.format import node_monitor


def _pending(p: dict) -> str:
    """``1 waiting-for-identity (1234), 0 init``: endpoints passing no traffic yet."""
    parts = []
    for key in ("waiting-for-identity", "init"):
        ids = p.get(key) or []
        parts.append(f"{len(ids)} {key}" + (f" ({' '.join(str(i) for i in ids)})" if ids else ""))
    return ", ".join(parts)


@click.command()
@output_option
@pass_ctx
@api_call
def status(ctx: Context) -> None:
    """Display status of the agent"""
    st = ctx.client.get("/healthz")
    if ctx.output == "json":
        emit_json(st)
        return
    def line(name: str, part: dict) -> None:
        click.echo(f"{name + ':':<20}{part.get('state', '')}   {part.get('msg', '')}".rstrip())
    line("KVStore", st["kvstore"])
    line("ContainerRuntime", st["container-runtime"])
    line("Kubernetes", st["kubernetes"])
    line("Cilium", st["cilium"])
    if "nodeMonitor" in st:
        click.echo(f"{'NodeMonitor:':<20}{node_monitor(st['nodeMonitor'])}")
    if "identity-allocation" in st:
        line("Identities", st["identity-allocation"])
    click.echo(f"{'Endpoints:':<20}{st['endpoints']}")
    if "identity-pending" in st:
        click.echo(f"{'Identity pending:':<20}{_pending(st['identity-pending'])}")
    click.echo(f"{'IPv4 address pool:':<20}{st['ipam']['ipv4']}")
    click.echo(f"{'IPv6 address pool:':<20}{st['ipam']['ipv6']}")


@click.command()
@click.argument("options", nargs=-1, metavar="[Key=Value]...")
@output_option
@pass_ctx
@api_call
def config(ctx: Context, options: tuple[str, ...]) -> None:
    """Cilium configuration options

    Without arguments, show them; `cilium config PolicyEnforcement=always` changes one.
    """
    changes = parse_options(options)
    if changes:
        cfg = ctx.client.request("PATCH", "/config", body={"options": changes})
    else:
        cfg = ctx.client.get("/config")
    if ctx.output == "json":
        emit_json(cfg)
        return
    for key, val in sorted((cfg.get("options") or {}).items()):
        click.echo(f"{key:<24}{val}")
    if changes:
        return
    for key, val in sorted(cfg["configuration"].items()):
        click.echo(f"{key:<24}{val}")


@click.command()
def version() -> None:
    """Print version information"""
    click.echo(f"Client: {__version__}")
