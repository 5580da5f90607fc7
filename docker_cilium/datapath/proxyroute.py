"""Policy routing that delivers packets BPF marked for the L7 proxy locally.

A packet steered to the proxy keeps its original destination (a container's
or a remote address), so the main table would forward it. The datapath marks
it ``MARK_MAGIC_TO_PROXY`` (datapath/marks.py) after assigning the proxy's
socket (bpf_src/lib/proxy.h); these rules, Cilium's, route it to the local
stack, which hands it to that socket:

    ip rule add fwmark 0x200/0xf00 lookup 2004 pref 9       (and ip -6)
    ip route add local 0.0.0.0/0 dev lo table 2004          (and local ::/0)

:func:`ensure` is idempotent (agent start); :func:`find` / :func:`remove`
serve ``cilium cleanup`` (datapath/cleanup.py).
"""

from __future__ import annotations

import errno
import os
import socket
from dataclasses import dataclass

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from docker_cilium.datapath.marks import (
    MARK_MAGIC_HOST_MASK,
    MARK_MAGIC_TO_PROXY,
    PROXY_ROUTE_TABLE,
    PROXY_RULE_PRIORITY,
)

FAMILIES = (socket.AF_INET, socket.AF_INET6)
RTN_LOCAL = 2
RT_SCOPE_HOST = 254
_ANY = {socket.AF_INET: "0.0.0.0", socket.AF_INET6: "::"}


@dataclass(frozen=True)
class ProxyRoute:
    """One rule or route of ours: ``kind`` "rule" or "route"."""

    kind: str
    family: int

    def __str__(self) -> str:
        v = "-4" if self.family == socket.AF_INET else "-6"
        if self.kind == "rule":
            return (f"ip {v} rule fwmark {MARK_MAGIC_TO_PROXY:#x}/{MARK_MAGIC_HOST_MASK:#x} "
                    f"lookup {PROXY_ROUTE_TABLE} pref {PROXY_RULE_PRIORITY}")
        return f"ip {v} route local {_ANY[self.family]}/0 dev lo table {PROXY_ROUTE_TABLE}"


def _rule_exists(ip: IPRoute, family: int) -> bool:
    for r in ip.get_rules(family=family):
        if (r.get_attr("FRA_TABLE") == PROXY_ROUTE_TABLE and r.get_attr("FRA_PRIORITY") == PROXY_RULE_PRIORITY
                and r.get_attr("FRA_FWMARK") == MARK_MAGIC_TO_PROXY
                and r.get_attr("FRA_FWMASK") == MARK_MAGIC_HOST_MASK):
            return True
    return False


def _route_exists(ip: IPRoute, family: int) -> bool:
    for r in ip.get_routes(family=family, table=PROXY_ROUTE_TABLE):
        if (r.get_attr("RTA_TABLE") == PROXY_ROUTE_TABLE and r["dst_len"] == 0
                and r["type"] == RTN_LOCAL):
            return True
    return False


def find(ip: IPRoute | None = None) -> list[ProxyRoute]:
    """The rules and routes of ours present now."""
    if ip is None:
        with IPRoute() as own:
            return find(own)
    out = []
    for family in FAMILIES:
        if _rule_exists(ip, family):
            out.append(ProxyRoute("rule", family))
        if _route_exists(ip, family):
            out.append(ProxyRoute("route", family))
    return out


def ensure(ipv6: bool = True, ip: IPRoute | None = None) -> list[ProxyRoute]:
    """Install what is missing (IPv4, and IPv6 unless ``ipv6`` is False);
    returns what was added."""
    if ip is None:
        with IPRoute() as own:
            return ensure(ipv6, own)
    lo = ip.link_lookup(ifname="lo")[0]
    added = []
    for family in FAMILIES if ipv6 else FAMILIES[:1]:
        if not _route_exists(ip, family):
            ip.route("replace", family=family, dst=f"{_ANY[family]}/0", type=RTN_LOCAL,
                     scope=RT_SCOPE_HOST, oif=lo, table=PROXY_ROUTE_TABLE)
            added.append(ProxyRoute("route", family))
        if not _rule_exists(ip, family):
            try:
                ip.rule("add", family=family, table=PROXY_ROUTE_TABLE, priority=PROXY_RULE_PRIORITY,
                        fwmark=MARK_MAGIC_TO_PROXY, fwmask=MARK_MAGIC_HOST_MASK)
            except NetlinkError as exc:
                if exc.code != errno.EEXIST:  # added concurrently
                    raise
            added.append(ProxyRoute("rule", family))
    return added


def remove(items: list[ProxyRoute], ip: IPRoute | None = None) -> list[str]:
    """Delete ``items`` (from :func:`find`); returns the errors (a missing one is not)."""
    if ip is None:
        with IPRoute() as own:
            return remove(items, own)
    errors = []
    for item in items:
        try:
            if item.kind == "rule":
                ip.rule("del", family=item.family, table=PROXY_ROUTE_TABLE, priority=PROXY_RULE_PRIORITY,
                        fwmark=MARK_MAGIC_TO_PROXY, fwmask=MARK_MAGIC_HOST_MASK)
            else:
                ip.route("del", family=item.family, dst=f"{_ANY[item.family]}/0", type=RTN_LOCAL,
                         scope=RT_SCOPE_HOST, oif=ip.link_lookup(ifname="lo")[0], table=PROXY_ROUTE_TABLE)
        except NetlinkError as exc:
            if exc.code not in (errno.ENOENT, errno.ESRCH):
                errors.append(f"{item}: {os.strerror(exc.code)}")
    return errors

