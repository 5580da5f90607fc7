"""The node handler: the datapath's view of the other nodes (Cilium's ``pkg/datapath/linux/node.go``).

A NodeObserver on the node registry. For every node other than this one it
keeps, as long as the node is in the registry:

- tunnel map entries for its IPv4 and IPv6 ranges -> its IPv4 address
  (tunnel mode only);
- a route to each of its ranges. Tunnel mode:
  ``<range4> via <our router4> dev cilium_host src <our router4> mtu <mtu>``
  and ``<range6> dev cilium_host mtu <mtu>``: the kernel refuses a local
  address as IPv6 gateway ("Gateway can not be a local address"), so the
  IPv6 route has none, as in Cilium. ``--tunnel disabled``: direct routes
  ``<range> via <its node address>`` (Cilium's auto-direct-node-routes; a
  range whose family the node has no address of gets none);
- ipcache entries: its node addresses -> reserved:remote-node (no tunnel
  endpoint: they are reached over the underlay), and its router (health)
  addresses -> reserved:remote-node behind its IPv4 address, as Cilium maps
  a node's CiliumInternalIP.

A record is what its writer put in the store: one whose range overlaps this
node's ranges, its address or another node's range (``0.0.0.0/0`` would
replace the default route), or whose addresses lie in this node's ranges,
is refused (logged, nothing programmed) until its record is sound; the
first node to hold a range keeps it.

Registry events only change the wanted state and wake one worker task; the
worker diffs wanted against applied and does the netlink and map work in a
single thread (serialized, off the event loop). A failure is logged, the
entry stays un-applied and the worker retries it later; nothing is raised
into the registry. Wanted state is keyed by destination, not by event, so a
node that leaves and rejoins with the same ranges between two passes costs
no netlink call, and one that changes its address gets its routes replaced
in place (``route replace``), never deleted and re-added.

At start the applied state is read back from the kernel (our routes carry
``ROUTE_PROTOCOL``) and from the tunnel map, so whatever belongs to no node
of the registry's first view (a node that left while we were down) is
deleted by the first pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Iterable, Protocol

import structlog
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from docker_cilium import defaults
from docker_cilium.identity.reserved import REMOTE_NODE
from docker_cilium.node.types import Node

log = structlog.get_logger(__name__)

#: rtm_protocol of the routes this handler owns: the start-up sweep deletes
#: only those (the kernel's, Docker's and the admin's routes carry others).
ROUTE_PROTOCOL = 0xC1
RT_TABLE_MAIN = 254
TUNNEL_VXLAN = defaults.TUNNEL_VXLAN
TUNNEL_DISABLED = defaults.TUNNEL_DISABLED
#: Seconds between passes while something fails to apply.
RETRY_S = 2.0


class TunnelMapAPI(Protocol):
    """``cilium_tunnel_map`` (datapath/maps/tunnel.py ``TunnelMap``): range -> tunnel endpoint."""

    def upsert(self, cidr: str, endpoint_ipv4: str) -> None: ...
    def delete(self, cidr: str) -> None: ...
    def dump(self) -> dict[str, str]: ...


class RemoteIPCache(Protocol):
    """The part of ``IPCache`` the handler writes: other nodes' addresses."""

    def upsert_remote(self, ip: str, identity: int, tunnel_endpoint: str | None) -> None: ...
    def delete_remote(self, ip: str) -> None: ...


@dataclass(frozen=True)
class NodeRoute:
    """One route to another node's range (what `ip route` shows)."""

    dst: str
    gateway: str | None = None
    dev: str | None = None
    src: str | None = None
    mtu: int = 0

    def __str__(self) -> str:
        parts = [self.dst] + [f"{k} {v}" for k, v in (("via", self.gateway), ("dev", self.dev), ("src", self.src),
                                                        ("mtu", self.mtu)) if v]
        return " ".join(parts)


class RouteApplier(Protocol):
    """Route programming, called from the handler's worker thread only."""

    def replace(self, route: NodeRoute) -> None: ...
    def delete(self, dst: str) -> None: ...
    def owned(self) -> list[str]: ...


class NetlinkRoutes:
    """RouteApplier on the main table through its own pyroute2 socket (one thread uses it)."""

    def __init__(self) -> None:
        self._ipr: IPRoute | None = None

    def _ip(self) -> IPRoute:
        if self._ipr is None:
            self._ipr = IPRoute()
        return self._ipr

    def replace(self, route: NodeRoute) -> None:
        kw: dict[str, Any] = {"dst": route.dst, "table": RT_TABLE_MAIN, "proto": ROUTE_PROTOCOL,
                              "family": 10 if ":" in route.dst else 2}
        if route.dev:
            found = self._ip().link_lookup(ifname=route.dev)
            if not found:
                raise RuntimeError(f"device {route.dev} not found")
            kw["oif"] = found[0]
        if route.gateway:
            kw["gateway"] = route.gateway
        if route.src:
            kw["prefsrc"] = route.src
        if route.mtu:
            kw["metrics"] = {"mtu": route.mtu}
        self._ip().route("replace", **kw)

    def delete(self, dst: str) -> None:
        try:
            self._ip().route("del", dst=dst, table=RT_TABLE_MAIN, proto=ROUTE_PROTOCOL,
                             family=10 if ":" in dst else 2)
        except NetlinkError as exc:
            if exc.code not in (errno.ESRCH, errno.ENOENT):
                raise

    def owned(self) -> list[str]:
        out = []
        for family in (2, 10):
            for r in self._ip().get_routes(family=family, table=RT_TABLE_MAIN):
                if r["proto"] == ROUTE_PROTOCOL and r.get_attr("RTA_DST"):
                    out.append(str(ipaddress.ip_network(f"{r.get_attr('RTA_DST')}/{r['dst_len']}")))
        return out

    def close(self) -> None:
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None


@dataclass(frozen=True)
class LocalNode:
    """What the handler needs of this node: its name, router addresses, route MTU, and the
    prefixes no other node's record may claim (our allocation ranges and node address)."""

    name: str
    router4: str
    router6: str | None
    mtu: int
    protected: tuple[str, ...] = ()


def _cidr(net: Any) -> str:
    return str(ipaddress.ip_network(net))


class NodeHandler:
    """Routes, tunnel entries and ipcache entries for the other nodes (see the module docstring)."""

    def __init__(self, local: LocalNode, tunnel: str, routes: RouteApplier, tunnel_map: TunnelMapAPI | None,
                 ipcache: RemoteIPCache, *, retry_s: float = RETRY_S) -> None:
        if tunnel not in (TUNNEL_VXLAN, TUNNEL_DISABLED):
            raise ValueError(f"tunnel mode {tunnel!r}: want {TUNNEL_VXLAN} or {TUNNEL_DISABLED}")
        self.local = local
        self.tunnel = tunnel
        self.routes = routes
        self.tunnel_map = tunnel_map
        self.ipcache = ipcache
        self.retry_s = retry_s
        self._nodes: dict[str, Node] = {}
        self._refused: dict[str, Node] = {}  # records that claim what is not theirs (see _claims_wrong)
        self._protected = [ipaddress.ip_network(p, strict=False) for p in local.protected]
        self._ipcache: dict[str, dict[str, str | None]] = {}  # node -> ip -> tunnel endpoint
        self._applied_routes: dict[str, NodeRoute | None] = {}  # None: found in the kernel, not made by us
        self._applied_tunnel: dict[str, str] = {}
        self._loaded = False
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nodehandler")
        self._task: asyncio.Task[None] | None = None
        self.failures = 0  # passes that left something un-applied

    # ---- NodeObserver (event loop) -------------------------------------------------

    def node_joined(self, node: Node) -> None:
        self._set(node)

    def node_updated(self, old: Node, new: Node) -> None:
        self._set(new)

    def node_left(self, node: Node) -> None:
        if node.name == self.local.name:
            return
        self._refused.pop(node.name, None)
        self._drop(node.name)
        for other in list(self._refused.values()):  # one may have waited for this node's ranges
            self._set(other)

    def _drop(self, name: str) -> None:
        self._nodes.pop(name, None)
        self._release(self._ipcache.pop(name, {}))
        self._kick()

    def _release(self, ips: Iterable[str]) -> None:
        """``ips`` are no longer wanted by the node that had them: out of the ipcache, unless
        another node's record names them too (a host back under another name while its old
        record waits for its lease), whose entry then stays."""
        for ip in ips:
            other = next((mine[ip] for mine in self._ipcache.values() if ip in mine), False)
            if other is False:
                self.ipcache.delete_remote(ip)
            else:
                self.ipcache.upsert_remote(ip, REMOTE_NODE, other)

    def _claims_wrong(self, node: Node) -> str | None:
        """Why ``node``'s record must not be programmed, or None.

        A record is whatever its writer put in the store: a range that
        overlaps ours (``0.0.0.0/0`` would replace the default route and
        send every container's traffic into the tunnel) or another node's,
        or that holds our node address, and node or health addresses inside
        our ranges, would divert traffic meant for someone else.
        """
        nets = [n for n in (node.ipv4_alloc_cidr, node.ipv6_alloc_cidr) if n is not None]
        for net in nets:
            for mine in self._protected:
                if net.overlaps(mine):  # type: ignore[arg-type]
                    return f"range {net} overlaps this node's {mine}"
            for other in self._nodes.values():
                if other.name == node.name:
                    continue
                for theirs in (other.ipv4_alloc_cidr, other.ipv6_alloc_cidr):
                    if theirs is not None and net.overlaps(theirs):  # type: ignore[arg-type]
                        return f"range {net} overlaps node {other.name}'s {theirs}"
        for ip in [ip for _, ip in node.addresses] + [node.ipv4_health_ip, node.ipv6_health_ip]:
            for mine in self._protected:
                if ip and ipaddress.ip_address(ip) in mine:
                    return f"address {ip} is in this node's {mine}"
        return None

    def _set(self, node: Node) -> None:
        if node.name == self.local.name:
            return
        if (why := self._claims_wrong(node)) is not None:
            if self._refused.get(node.name) != node:
                log.warning("nodehandler.node_refused", node=node.name, reason=why)
            self._refused[node.name] = node
            self._drop(node.name)
            return
        self._refused.pop(node.name, None)
        self._nodes[node.name] = node
        want = self._ipcache_entries(node)
        had = self._ipcache.get(node.name, {})
        self._ipcache[node.name] = want
        self._release(had.keys() - want.keys())
        for ip, endpoint in want.items():
            if had.get(ip, "") != endpoint:
                self.ipcache.upsert_remote(ip, REMOTE_NODE, endpoint)
        self._kick()

    def _ipcache_entries(self, node: Node) -> dict[str, str | None]:
        out: dict[str, str | None] = {ip: None for _, ip in node.addresses}
        behind = node.tunnel_endpoint if self.tunnel == TUNNEL_VXLAN else None
        for ip in (node.ipv4_health_ip, node.ipv6_health_ip):
            if ip and ip not in out:
                out[ip] = behind
        return out

    # ---- wanted state ----------------------------------------------------------------

    def wanted_routes(self) -> dict[str, NodeRoute]:
        """Destination -> route, for every other node's ranges."""
        out: dict[str, NodeRoute] = {}
        loc = self.local
        for node in self._nodes.values():
            for net in (node.ipv4_alloc_cidr, node.ipv6_alloc_cidr):
                if net is None or (net.version == 6 and loc.router6 is None):
                    continue
                dst = str(net)
                if self.tunnel == TUNNEL_VXLAN:
                    out[dst] = (NodeRoute(dst, loc.router4, defaults.HOST_DEVICE, loc.router4, loc.mtu)
                                if net.version == 4 else NodeRoute(dst, None, defaults.HOST_DEVICE, None, loc.mtu))
                    continue
                via = next((ip for _, ip in node.addresses if ipaddress.ip_address(ip).version == net.version), None)
                if via is not None:
                    out[dst] = NodeRoute(dst, via)
        return out

    def wanted_tunnel(self) -> dict[str, str]:
        """Range -> tunnel endpoint, for every other node's ranges (tunnel mode)."""
        if self.tunnel != TUNNEL_VXLAN or self.tunnel_map is None:
            return {}
        out = {}
        for node in self._nodes.values():
            endpoint = node.tunnel_endpoint
            for net in (node.ipv4_alloc_cidr, node.ipv6_alloc_cidr):
                if net is not None and endpoint is not None:
                    out[str(net)] = endpoint
        return out

    # ---- the worker ------------------------------------------------------------------

    async def start(self) -> None:
        """Start the worker; its first pass sweeps what no known node owns."""
        self._task = asyncio.create_task(self._run(), name="node-handler")
        self._kick()

    async def close(self) -> None:
        """Stop the worker; routes and tunnel entries stay (the datapath keeps forwarding)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        closer = getattr(self.routes, "close", None)
        await asyncio.get_running_loop().run_in_executor(self._pool, closer or (lambda: None))
        self._pool.shutdown(wait=True)

    async def settled(self) -> None:
        """Wait until the applied state is the wanted one (tests, start-up ordering)."""
        while not (self._idle.is_set() and not self._wake.is_set()):
            await asyncio.sleep(0.01)

    def _kick(self) -> None:
        self._idle.clear()
        self._wake.set()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            routes, tunnel = self.wanted_routes(), self.wanted_tunnel()
            try:
                errors = await loop.run_in_executor(self._pool, self._apply, routes, tunnel)
            except Exception as exc:  # a bug, not a netlink answer: the worker goes on and retries
                log.exception("nodehandler.pass_failed")
                errors = [("pass", str(exc))]
            if not errors:
                if not self._wake.is_set():
                    self._idle.set()
                continue
            self.failures += 1
            for what, err in errors:
                log.warning("nodehandler.apply_failed", what=what, error=err, retry_s=self.retry_s)
            await asyncio.sleep(self.retry_s)
            self._wake.set()

    def _apply(self, routes: dict[str, NodeRoute], tunnel: dict[str, str]) -> list[tuple[str, str]]:
        """One pass in the worker thread: applied -> wanted. Returns what failed."""
        errors: list[tuple[str, str]] = []
        if not self._loaded:
            try:
                self._load()
            except Exception as exc:  # netlink or map read: retried next pass
                return [("read routes and tunnel map", str(exc))]
        for dst in [d for d in self._applied_routes if d not in routes]:
            if self._try(errors, f"delete route {dst}", self.routes.delete, dst):
                self._applied_routes.pop(dst, None)
                log.info("nodehandler.route_deleted", dst=dst)
        for cidr in [c for c in self._applied_tunnel if c not in tunnel]:
            assert self.tunnel_map is not None
            if self._try(errors, f"delete tunnel {cidr}", self.tunnel_map.delete, cidr):
                self._applied_tunnel.pop(cidr, None)
                log.info("nodehandler.tunnel_deleted", cidr=cidr)
        for dst, route in routes.items():
            if self._applied_routes.get(dst) != route and self._try(errors, f"route {route}",
                                                                     self.routes.replace, route):
                self._applied_routes[dst] = route
                log.info("nodehandler.route_set", route=str(route))
        for cidr, endpoint in tunnel.items():
            assert self.tunnel_map is not None
            if self._applied_tunnel.get(cidr) != endpoint and self._try(errors, f"tunnel {cidr} -> {endpoint}",
                                                                        self.tunnel_map.upsert, cidr, endpoint):
                self._applied_tunnel[cidr] = endpoint
                log.info("nodehandler.tunnel_set", cidr=cidr, endpoint=endpoint)
        return errors

    def _load(self) -> None:
        """What an earlier run left: our routes, the tunnel map's entries (all of them are ours)."""
        self._applied_routes = {_cidr(d): None for d in self.routes.owned()}
        self._applied_tunnel = ({_cidr(c): e for c, e in self.tunnel_map.dump().items()}
                                if self.tunnel_map is not None else {})
        self._loaded = True

    @staticmethod
    def _try(errors: list[tuple[str, str]], what: str, fn: Any, *args: Any) -> bool:
        try:
            fn(*args)
            return True
        except Exception as exc:  # logged by the caller and retried
            errors.append((what, str(exc)))
            return False

    def status(self) -> dict[str, Any]:
        """Nodes handled and what is applied now (debugging, tests)."""
        return {"nodes": sorted(self._nodes), "routes": sorted(self._applied_routes),
                "tunnel": dict(sorted(self._applied_tunnel.items())), "failures": self.failures}
