"""`cilium status` and `cilium version`."""

from __future__ import annotations

import sys
import time
from datetime import datetime
from typing import Any

import click

from docker_cilium.cli.common import Context, output_option, pass_ctx
from docker_cilium.cli.output import emit_json, table
from docker_cilium.errors import APIError
from docker_cilium.version import version_info, version_line

#: Components whose "Failure" makes `cilium status` exit 1.
COMPONENTS = (("KVStore", "kvstore"), ("ContainerRuntime", "container-runtime"), ("Kubernetes", "kubernetes"),
              ("Cilium", "cilium"), ("NodeMonitor", "nodeMonitor"))
WIDTH = 24


def _pending(p: dict) -> str:
    """``1 waiting-for-identity (1234), 0 init``: endpoints passing no traffic yet."""
    parts = []
    for key in ("waiting-for-identity", "init"):
        ids = p.get(key) or []
        parts.append(f"{len(ids)} {key}" + (f" ({' '.join(str(i) for i in ids)})" if ids else ""))
    return ", ".join(parts)


def ago(stamp: str, now: float | None = None) -> str:
    """``12s ago`` from an RFC 3339 timestamp; ``never`` for none."""
    if not stamp:
        return "never"
    secs = max(0, int((time.time() if now is None else now) - datetime.fromisoformat(stamp).timestamp()))
    if secs < 120:
        return f"{secs}s ago"
    if secs < 7200:
        return f"{secs // 60}m ago"
    return f"{secs // 3600}h ago"


def unhealthy(st: dict[str, Any]) -> list[str]:
    """Components in state Failure (the exit status of `cilium status`)."""
    return [name for name, key in COMPONENTS if (st.get(key) or {}).get("state") == "Failure"]


def _line(name: str, text: Any) -> None:
    click.echo(f"{name + ':':<{WIDTH}}{text}".rstrip())


def _controllers(ctrls: list[dict[str, Any]], show_all: bool) -> None:
    failing = [c for c in ctrls if c["status"]["consecutive-failure-count"]]
    _line("Controller Status", f"{len(ctrls) - len(failing)}/{len(ctrls)} healthy")
    shown = ctrls if show_all else failing
    if not shown:
        return
    rows = []
    for c in shown:
        s = c["status"]
        rows.append(["  " + c["name"], ago(s["last-success-timestamp"]), ago(s["last-failure-timestamp"]),
                     s["consecutive-failure-count"], s["last-failure-msg"] or "no error"])
    table(["  Name", "Last success", "Last error", "Count", "Message"], rows)


def _pool(family: str, ipam: dict[str, Any], show_all: bool) -> None:
    _line(f"{family} address pool", ipam.get(family.lower(), ""))
    if not show_all:
        return
    version = 4 if family == "IPv4" else 6
    for ip, owner in (ipam.get("allocations") or {}).items():
        if (":" in ip) == (version == 6):
            click.echo(f"  {ip:<{WIDTH - 2}}{owner}".rstrip())


def proxy_line(p: dict[str, Any]) -> str:
    """Cilium's: ``OK, ip 10.15.0.1, 2 redirects active on ports 10000-20000``."""
    if p.get("state") == "Disabled":
        return "Disabled"
    return f"OK, ip {p.get('ip', '')}, {p.get('total-redirects', 0)} redirects active on ports {p.get('port-range', '')}"


def cluster_health_line(h: dict[str, Any], now: float | None = None) -> str:
    """Cilium's ``2/3 reachable   (last probe 4s ago)``, the unreachable nodes named."""
    down = [n["name"] for n in h.get("nodes") or [] if not (n.get("host", {}).get("reachable")
                                                          and n.get("tunnel", {}).get("reachable"))]
    last = ago(h.get("last-probe", ""), now)
    text = f"{h.get('reachable', 0)}/{h.get('total', 0)} reachable   (last probe {last})"
    return text + (f"   unreachable: {', '.join(down)}" if down else "")


def print_status(st: dict[str, Any], all_addresses: bool, all_controllers: bool, verbose: bool) -> None:
    for name, key in COMPONENTS:
        part = st.get(key) or {}
        _line(name, f"{part.get('state', '')}   {part.get('msg', '')}")
    if "identity-allocation" in st:
        _line("Identities", st["identity-allocation"].get("msg", ""))
    _line("Endpoints", st.get("endpoints", ""))
    if "identity-pending" in st:
        _line("Identity pending", _pending(st["identity-pending"]))
    policy = st.get("policy") or {}
    if policy:
        _line("Policy enforcement", f"{policy.get('enforcement', '')} (policy revision {policy.get('revision', 0)})")
    if "proxy" in st:
        _line("Proxy Status", proxy_line(st["proxy"]))
    ipam = st.get("ipam") or {}
    _pool("IPv4", ipam, all_addresses or verbose)
    _pool("IPv6", ipam, all_addresses or verbose)
    _controllers(st.get("controllers") or [], all_controllers or verbose)
    if "cluster-health" in st:
        _line("Cluster health", cluster_health_line(st["cluster-health"]))


@click.command()
@click.option("--all-addresses", is_flag=True, help="Show all allocated IP addresses")
@click.option("--all-controllers", is_flag=True, help="Show all controllers")
@click.option("--verbose", is_flag=True, help="Show everything (all addresses and controllers)")
@output_option
@pass_ctx
def status(ctx: Context, all_addresses: bool, all_controllers: bool, verbose: bool) -> None:
    """Display status of the agent (exit status 1 when a component is in Failure)"""
    st = ctx.client.get("/healthz")
    if ctx.output == "json":
        emit_json(st)
    else:
        print_status(st, all_addresses, all_controllers, verbose)
    bad = unhealthy(st)
    if bad:
        click.echo(f"unhealthy: {', '.join(bad)}", err=True)
        sys.exit(1)


@click.command()
@output_option
@pass_ctx
def version(ctx: Context) -> None:
    """Print version information (client and agent)"""
    client = version_info()
    try:
        daemon: dict[str, str] | None = ctx.client.get("/healthz").get("cilium-version")
        error = "" if daemon else "the agent reports no version"
    except APIError as exc:
        daemon, error = None, str(exc)
    if ctx.output == "json":
        emit_json({"Client": client, "Daemon": daemon})
    else:
        click.echo(f"Client: {version_line(client)}")
        click.echo(f"Daemon: {version_line(daemon) if daemon else 'Not responding'}")
    if error:
        raise click.ClickException(error)
