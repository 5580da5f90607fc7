"""`cilium bpf ...`: read the datapath's pinned BPF maps directly.

As in Cilium, these verbs do not go through the agent: they open the maps
pinned under the pin root (``/sys/fs/bpf/tc/globals``), so they work when the
agent is down and show what the kernel really enforces. That needs root
(CAP_BPF/CAP_SYS_ADMIN). The agent API is only used, when reachable, to turn
identity numbers into labels.
"""

from __future__ import annotations

import dataclasses
import errno
import ipaddress
import os
from typing import Any, Callable

import click

from docker_cilium import defaults

from docker_cilium.errors import APIError
from docker_cilium.cli.common import Context, output_option, pass_ctx
from docker_cilium.cli.output import emit_json, table
from docker_cilium.datapath.maps.ctmap import (
    CT4_MAP,
    CT6_MAP,
    CT_F_PROXY_REDIRECT,
    CT_INGRESS,
    CT_SERVICE,
    monotonic_seconds,
)
from docker_cilium.datapath.maps.lxcmap import EP_F_EGRESS_ENFORCED, EP_F_INGRESS_ENFORCED
from docker_cilium.datapath.maps.policymap import PROTO_NAMES
from docker_cilium.datapath.maps.registry import DatapathMaps
from docker_cilium.metrics.datapath import direction_name, reason_name

PIN_ROOT_ENV = "CILIUM_BPF_ROOT"


def open_maps(pin_root: str) -> Any:
    """Open every pinned map (a seam for tests, which substitute fakes)."""
    return DatapathMaps.open(pin_root)


def _with_maps(pin_root: str, fn: Callable[[Any], Any]) -> Any:
    try:
        dp = open_maps(pin_root)
    except OSError as exc:
        hint = ""
        if exc.errno in (errno.EPERM, errno.EACCES):
            hint = " (bpf verbs read the kernel's maps directly: run as root)"
        elif exc.errno == errno.ENOENT:
            hint = " (is the agent's datapath loaded? maps are pinned when the agent starts)"
        raise click.ClickException(f"cannot open BPF maps under {pin_root}: {exc}{hint}") from None
    try:
        return fn(dp)
    except OSError as exc:
        raise click.ClickException(f"reading BPF maps under {pin_root}: {exc}") from None
    finally:
        dp.close()


def bpf_root_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--bpf-root`` means what it means for the agent: the bpffs mount; the
    maps live under ``<root>/tc/globals``."""
    return click.option("--bpf-root", "pin_root", envvar=PIN_ROOT_ENV, default=defaults.BPFFS_ROOT,
                        hidden=True, help="bpffs root the agent pins under",
                        callback=lambda ctx, param, value: defaults.bpf_pin_root(value))(fn)


@click.group()
def bpf() -> None:
    """Direct access to local BPF maps"""


# --- policy ------------------------------------------------------------------
def _identity_labels(ctx: Context) -> dict[int, list[str]] | None:
    """Identity -> labels from the agent, or None when it cannot be asked."""
    try:
        return {int(i["id"]): list(i["labels"]) for i in ctx.client.get("/identity")}
    except (APIError, OSError, ValueError, KeyError, TypeError):
        return None


def _policy_rows(stats: list, labels: dict[int, list[str]] | None) -> list[list[Any]]:
    rows = []
    for s in stats:
        if labels is None:
            peer = s.identity
        elif s.identity == 0:
            peer = "reserved:unknown"  # identity 0 in the map = any peer, shown as Cilium does
        else:
            peer = "\n".join(labels.get(s.identity) or [str(s.identity)])
        direction = s.direction_name + (" (deny)" if s.deny else "")
        rows.append([direction, peer, s.port_proto, s.proxy_port or "NONE", s.bytes, s.packets])
    return rows


@bpf.group("policy")
def policy_group() -> None:
    """Manage policy related BPF maps"""


@policy_group.command("get")
@click.argument("endpoint_id", required=False, type=int)
@click.option("--all", "all_", is_flag=True, help="Dump the policy of every endpoint")
@click.option("-n", "--numeric", is_flag=True, help="Do not resolve identities to labels")
@bpf_root_option
@output_option
@pass_ctx
def policy_get(ctx: Context, endpoint_id: int | None, all_: bool, numeric: bool, pin_root: str) -> None:
    """List the policy entries of an endpoint (as enforced by the datapath)"""
    if (endpoint_id is None) == (not all_):
        raise click.UsageError("give an endpoint ID or --all (not both)")
    stats = _with_maps(pin_root, lambda dp: dp.policy.dump(None if all_ else endpoint_id))
    labels = None if numeric else _identity_labels(ctx)
    if ctx.output == "json":
        out = [dataclasses.asdict(s) | {"direction": s.direction_name, "port-proto": s.port_proto}
               for s in stats]
        if labels is not None:
            for item, s in zip(out, stats):
                item["labels"] = labels.get(s.identity, [])
        emit_json(out)
        return
    headers = ["DIRECTION", "LABELS (source:key[=value])" if labels is not None else "IDENTITY",
               "PORT/PROTO", "PROXY PORT", "BYTES", "PACKETS"]
    if not all_:
        if not stats:
            click.echo(f"Endpoint {endpoint_id}: no policy entries (unknown endpoint, "
                       "or nothing allowed in an enforced direction)")
            return
        table(headers, _policy_rows(stats, labels))
        return
    by_ep: dict[int, list] = {}
    for s in stats:
        by_ep.setdefault(s.lxc_id, []).append(s)
    for i, (lxc_id, entries) in enumerate(sorted(by_ep.items())):
        if i:
            click.echo()
        click.echo(f"Endpoint {lxc_id}:")
        table(headers, _policy_rows(entries, labels))


# --- conntrack -------------------------------------------------------------------
def _addr(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def ct_line(e: Any, now: int | None = None) -> str:
    proto = PROTO_NAMES.get(e.proto, str(e.proto))
    direction = {CT_INGRESS: "IN", CT_SERVICE: "SVC"}.get(e.direction, "OUT")
    expires = e.expires_in(now)
    return (f"{proto} {direction} {_addr(e.saddr, e.sport)} -> {_addr(e.daddr, e.dport)} "
            f"expires={expires}{' (expired)' if expires < 0 else ''} packets={e.packets} bytes={e.bytes} "
            f"flags=0x{e.flags:x} " + (f"backend_id={e.src_sec_id}" if e.direction == CT_SERVICE
                                       else f"src_identity={e.src_sec_id}")
            + (f" rev_nat={e.rev_nat_index}" if e.rev_nat_index else ""))


def _check_table(name: str) -> None:
    if name != "global":
        raise click.BadParameter(f"{name!r}: only the 'global' conntrack table exists", param_hint="TABLE")


@bpf.group("ct")
def ct() -> None:
    """Connection tracking tables"""


@ct.command("list")
@click.argument("table_name", metavar="global")
@bpf_root_option
@output_option
@pass_ctx
def ct_list(ctx: Context, table_name: str, pin_root: str) -> None:
    """List connection tracking entries"""
    _check_table(table_name)
    entries = _with_maps(pin_root, lambda dp: dp.ct.dump())
    entries.sort(key=lambda e: (e.family, e.proto, e.saddr, e.sport, e.daddr, e.dport, e.direction))
    now = monotonic_seconds()
    if ctx.output == "json":
        emit_json([dataclasses.asdict(e) | {"expires": e.expires_in(now)} for e in entries])
        return
    for e in entries:
        click.echo(ct_line(e, now))


@ct.command("flush")
@click.argument("table_name", metavar="global")
@bpf_root_option
@output_option
@pass_ctx
def ct_flush(ctx: Context, table_name: str, pin_root: str) -> None:
    """Flush all connection tracking entries"""
    _check_table(table_name)
    n = _with_maps(pin_root, lambda dp: dp.ct.flush())
    if ctx.output == "json":
        emit_json({"flushed": n})
    else:
        click.echo(f"Flushed {n} entries from {os.path.join(pin_root, CT4_MAP)} and "
                   f"{os.path.join(pin_root, CT6_MAP)}")


# --- proxy -------------------------------------------------------------------------
@bpf.group("proxy")
def proxy_group() -> None:
    """Access proxy configuration"""


@proxy_group.command("list")
@bpf_root_option
@output_option
@pass_ctx
def proxy_list(ctx: Context, pin_root: str) -> None:
    """List the connections redirected to the L7 proxy

    The conntrack entries the datapath marked for the proxy: the client's
    address (SOURCE), the address it connected to, which the proxy serves
    and forwards to (ORIGINAL DESTINATION), which program opened the entry
    (OUT: the client's from-container, IN: the server's to-container, through
    cilium_host), the client's identity, the entry's CT flags and its expiry
    in seconds."""
    entries = [e for e in _with_maps(pin_root, lambda dp: dp.ct.dump()) if e.flags & CT_F_PROXY_REDIRECT]
    entries.sort(key=lambda e: (e.family, e.saddr, e.sport, e.daddr, e.dport, e.direction))
    now = monotonic_seconds()
    if ctx.output == "json":
        emit_json([dataclasses.asdict(e) | {"expires": e.expires_in(now)} for e in entries])
        return
    if not entries:
        click.echo("No connections redirected to the proxy")
        return
    table(["PROTO", "SOURCE", "ORIGINAL DESTINATION", "CT", "SOURCE IDENTITY", "FLAGS", "EXPIRES"],
          [[PROTO_NAMES.get(e.proto, str(e.proto)), _addr(e.saddr, e.sport), _addr(e.daddr, e.dport),
            "IN" if e.direction == CT_INGRESS else "OUT", e.src_sec_id, f"0x{e.flags:x}",
            e.expires_in(now)] for e in entries])


# --- endpoints / ipcache ------------------------------------------------------------
@bpf.group("endpoint")
def endpoint_group() -> None:
    """Local endpoint map"""


@endpoint_group.command("list")
@bpf_root_option
@output_option
@pass_ctx
def endpoint_list(ctx: Context, pin_root: str) -> None:
    """List local endpoint entries"""
    infos = sorted(_with_maps(pin_root, lambda dp: dp.endpoints.dump()), key=lambda i: i.lxc_id)
    if ctx.output == "json":
        emit_json([dataclasses.asdict(i) for i in infos])
        return
    rows = []
    for i in infos:
        flags = ((EP_F_INGRESS_ENFORCED if i.ingress_enforced else 0)
                 | (EP_F_EGRESS_ENFORCED if i.egress_enforced else 0))
        info = (f"id={i.lxc_id} ifindex={i.ifindex} mac={i.mac} nodemac={i.node_mac} "
                f"identity={i.sec_identity} flags=0x{flags:x}")
        for ip in (i.ipv4, i.ipv6):
            if ip:
                rows.append([ip, info])
    table(["IP ADDRESS", "LOCAL ENDPOINT INFO"], rows)


@bpf.group("ipcache")
def ipcache() -> None:
    """IP to identity cache"""


@ipcache.command("list")
@bpf_root_option
@output_option
@pass_ctx
def ipcache_list(ctx: Context, pin_root: str) -> None:
    """List IP prefixes and their security identity"""
    entries = _with_maps(pin_root, lambda dp: dp.ipcache.dump())
    order = sorted(entries.values(), key=lambda e: (ipaddress.ip_network(e.prefix).version,
                                                    ipaddress.ip_network(e.prefix)))
    if ctx.output == "json":
        emit_json([dataclasses.asdict(e) for e in order])
        return
    rows = [[e.prefix, f"{e.identity}" + (f" tunnelendpoint={e.tunnel_endpoint}" if e.tunnel_endpoint else "")]
            for e in order]
    table(["IP PREFIX/ADDRESS", "IDENTITY"], rows)


@bpf.group("tunnel")
def tunnel_group() -> None:
    """Tunnel endpoint map"""


@tunnel_group.command("list")
@bpf_root_option
@output_option
@pass_ctx
def tunnel_list(ctx: Context, pin_root: str) -> None:
    """List other nodes' ranges and the node (tunnel endpoint) each is behind"""
    entries = _with_maps(pin_root, lambda dp: dp.tunnel.dump())
    order = sorted(entries.items(), key=lambda kv: (ipaddress.ip_network(kv[0]).version,
                                                    ipaddress.ip_network(kv[0])))
    if ctx.output == "json":
        emit_json([{"tunnel": cidr, "value": endpoint} for cidr, endpoint in order])
        return
    table(["TUNNEL", "VALUE"], [[cidr, endpoint] for cidr, endpoint in order])


# --- lb -----------------------------------------------------------------------------
@bpf.group("lb")
def lb_group() -> None:
    """Load-balancing configuration"""


@lb_group.command("list")
@bpf_root_option
@output_option
@pass_ctx
def lb_list(ctx: Context, pin_root: str) -> None:
    """List load-balancing configuration (services and their backends, as the maps hold them)"""
    services = _with_maps(pin_root, lambda dp: dp.lb.dump())
    if ctx.output == "json":
        emit_json([{"id": s.id, "frontend": dataclasses.asdict(s.frontend),
                    "backends": [{"backend-id": i, **dataclasses.asdict(b)} for i, b in s.backends]}
                   for s in services])
        return
    if not services:
        click.echo("No entries found.", err=True)
        return
    rows = [[f"{_addr(s.frontend.ip, s.frontend.port)}/{s.frontend.protocol}",
             "\n".join(f"{_addr(b.ip, b.port)} ({s.id})" for _i, b in s.backends) or f"(no backends) ({s.id})"]
            for s in services]
    table(["SERVICE ADDRESS", "BACKEND ADDRESS (REVNAT_ID)"], rows)


# --- metrics ------------------------------------------------------------------------
@bpf.group("metrics")
def metrics_group() -> None:
    """BPF datapath traffic metrics"""


@metrics_group.command("list")
@bpf_root_option
@output_option
@pass_ctx
def metrics_list(ctx: Context, pin_root: str) -> None:
    """List BPF datapath traffic metrics (packets and bytes by reason and direction)"""
    counters = _with_maps(pin_root, lambda dp: dp.metrics.dump())
    # Forwarded first, then drops by reason number, as the map's keys sort.
    rows = [(reason, direction, packets, nbytes)
            for (reason, direction), (packets, nbytes) in sorted(counters.items())]
    if ctx.output == "json":
        emit_json([{"reason": reason_name(r), "reason-code": r, "direction": direction_name(d),
                    "packets": p, "bytes": b} for r, d, p, b in rows])
        return
    if not rows:
        click.echo("No entries found.", err=True)
        return
    table(["REASON", "DIRECTION", "PACKETS", "BYTES"],
          [[reason_name(r), direction_name(d), p, b] for r, d, p, b in rows])
