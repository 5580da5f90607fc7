"""The proxy's redirects (Cilium's ``pkg/proxy``): one transparent listener
port per (endpoint, direction, port, TCP) whose policy has L7 rules.

Each redirect gets a port from ``PROXY_PORT_MIN..PROXY_PORT_MAX`` and
listens on ``0.0.0.0:P`` and ``[::]:P`` (v6only) with IP_TRANSPARENT /
IPV6_TRANSPARENT: the datapath assigns redirected connections to these
sockets (bpf_sk_assign), so an accepted socket's local address is the
ORIGINAL destination and its peer the original source. A redirect that
stays keeps its port and listener and gets its new rules in place (open
connections use them from their next request); a redirect that goes closes
its listeners and its open connections.
"""

from __future__ import annotations

import asyncio
import errno
import socket
from dataclasses import dataclass, field
from typing import Any, Mapping

import structlog

from docker_cilium import defaults
from docker_cilium.datapath.marks import MARK_MAGIC_PROXY_EGRESS, MARK_MAGIC_PROXY_INGRESS, identity_mark
from docker_cilium.errors import AllocationFailed
from docker_cilium.identity import reserved
from docker_cilium.proxy.accesslog import AccessLog, Flow
from docker_cilium.proxy.http import ConnectionContext, ProxyConnection, ProxyLimits
from docker_cilium.proxy.peers import PeerLookup
from docker_cilium.proxy.upstreams import EgressUpstreams
from docker_cilium.proxy.redirect import EndpointAddr, L7RulesByPeer, RedirectKey
from docker_cilium.proxy.rules import L7Policy

log = structlog.get_logger(__name__)

IP_TRANSPARENT = getattr(socket, "IP_TRANSPARENT", 19)
IPV6_TRANSPARENT = 75  # linux/in6.h; not exported by Python's socket module


def _addr(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def listen_socket(family: int, host: str, port: int, transparent: bool) -> socket.socket:
    """A listening TCP socket, transparent when asked (needs CAP_NET_ADMIN)."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if transparent:
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, IPV6_TRANSPARENT, 1)
            else:
                sock.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
        sock.bind((host, port))
        sock.listen(1024)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


@dataclass
class Redirect:
    key: RedirectKey
    endpoint: EndpointAddr
    policy: L7Policy
    port: int
    servers: list[asyncio.Server] = field(default_factory=list)
    connections: set[ProxyConnection] = field(default_factory=set)

    def to_dict(self) -> dict[str, Any]:
        return {"endpoint-id": self.key.endpoint_id, "direction": self.key.direction, "port": self.key.port,
                "proxy-port": self.port, "connections": len(self.connections)}


class ProxyManager:
    """Implements ``proxy.redirect.ProxyRedirects`` for the regenerator."""

    def __init__(self, peers: PeerLookup, access: AccessLog, *, port_min: int = defaults.PROXY_PORT_MIN,
                 port_max: int = defaults.PROXY_PORT_MAX, limits: ProxyLimits | None = None,
                 ipv6: bool = True, transparent: bool = True, bind4: str = "0.0.0.0", bind6: str = "::") -> None:
        self.peers = peers
        self.access = access
        self.port_min, self.port_max = port_min, port_max
        self.limits = limits or ProxyLimits()
        self.ipv6 = ipv6
        self.transparent = transparent
        self.bind4, self.bind6 = bind4, bind6
        self.redirects: dict[RedirectKey, Redirect] = {}
        self.upstreams = EgressUpstreams()
        self.connections = 0
        self._tasks: set[asyncio.Task[None] | asyncio.Future[None]] = set()  # serving connections
        self._lock = asyncio.Lock()

    # ---- ProxyRedirects ------------------------------------------------------------

    async def update_endpoint(self, ep: EndpointAddr,
                              redirects: Mapping[RedirectKey, L7RulesByPeer]) -> dict[RedirectKey, int]:
        async with self._lock:
            policies = {key: L7Policy(rules) for key, rules in redirects.items()}  # bad regex: nothing changed
            opened: list[Redirect] = []
            try:
                for key in sorted(policies):
                    if key not in self.redirects:
                        red = Redirect(key, ep, policies[key], 0)
                        await self._listen(red)
                        opened.append(red)
                        self.redirects[key] = red
            except BaseException:
                for red in opened:
                    self.redirects.pop(red.key, None)
                    self._close(red)
                raise
            for key, policy in policies.items():
                red = self.redirects[key]
                red.policy, red.endpoint = policy, ep
            for key in [k for k in self.redirects if k.endpoint_id == ep.id and k not in policies]:
                self._close(self.redirects.pop(key))
            self._count()
            if opened:
                log.info("proxy.redirects_added", endpoint=ep.id,
                         redirects=[f"{r.key.direction}/{r.key.port}->{r.port}" for r in opened])
            return {key: self.redirects[key].port for key in policies}

    async def remove_endpoint(self, endpoint_id: int) -> None:
        async with self._lock:
            for key in [k for k in self.redirects if k.endpoint_id == endpoint_id]:
                self._close(self.redirects.pop(key))
            self._count()

    async def close(self) -> None:
        """Close every listener and connection (the agent is stopping)."""
        async with self._lock:
            for red in self.redirects.values():
                self._close(red)
            self.redirects.clear()
            self._count()
        if self._tasks:  # aborted connections end at their next read
            await asyncio.wait(set(self._tasks), timeout=2.0)

    # ---- status ----------------------------------------------------------------------

    def status(self, ip: str) -> dict[str, Any]:
        """Cilium's ProxyStatus (the "Proxy Status" line of `cilium status`)."""
        ports = sorted(r.port for r in self.redirects.values())
        return {"ip": ip, "port-range": f"{self.port_min}-{self.port_max}",
                "total-redirects": len(self.redirects), "total-ports": len(ports),
                "connections": self.connections,
                "redirects": [r.to_dict() for r in sorted(self.redirects.values(), key=lambda r: r.key)]}

    # ---- listeners -------------------------------------------------------------------

    def _count(self) -> None:
        self.access.metrics.proxy_redirects(len(self.redirects))

    async def _listen(self, red: Redirect) -> None:
        used = {r.port for r in self.redirects.values()}
        for port in range(self.port_min, self.port_max + 1):
            if port in used or port == red.key.port:
                continue
            socks: list[socket.socket] = []
            try:
                socks.append(listen_socket(socket.AF_INET, self.bind4, port, self.transparent))
                if self.ipv6:
                    socks.append(listen_socket(socket.AF_INET6, self.bind6, port, self.transparent))
            except OSError as exc:
                for s in socks:
                    s.close()
                if exc.errno == errno.EADDRINUSE:
                    continue  # another process holds it
                raise AllocationFailed(f"proxy listener on port {port}: {exc.strerror or exc}") from exc
            red.port = port
            for s in socks:
                red.servers.append(await asyncio.start_server(
                    lambda r, w, red=red: self._accept(red, r, w), sock=s, limit=64 * 1024))
            return
        raise AllocationFailed(f"no free proxy port in {self.port_min}-{self.port_max}")

    def _close(self, red: Redirect) -> None:
        for server in red.servers:
            server.close()
        for conn in list(red.connections):
            conn.close()
        red.connections.clear()

    async def _accept(self, red: Redirect, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """A redirected connection: the socket's local address is the original destination."""
        local, peer = writer.get_extra_info("sockname"), writer.get_extra_info("peername")
        if self.redirects.get(red.key) is not red or self.connections >= self.limits.max_connections:
            writer.transport.abort()
            return
        if local[1] == red.port:
            # Not redirected: someone connected to the proxy port itself. Forwarding
            # it would connect back to the proxy.
            writer.transport.abort()
            return
        await self.serve(red, reader, writer, (local[0], local[1]), (peer[0], peer[1]))

    async def serve(self, red: Redirect, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    original: tuple[str, int], client: tuple[str, int]) -> None:
        """Proxy one connection of ``red`` whose original destination is ``original``."""
        ingress = red.key.direction == "ingress"
        # A connection our own egress proxy opened (hairpinned here) comes from
        # the host's address: its source is the endpoint behind it. Only a host
        # client is looked up: the table is keyed by port alone, and a peer that
        # picked the same source port must not take that endpoint's identity.
        src = self.peers.peer(client[0])
        if ingress and src.identity == reserved.HOST:
            src = self.upstreams.source(client) or src
        dst = self.peers.peer(original[0])
        try:
            mark = identity_mark(MARK_MAGIC_PROXY_INGRESS, src.identity) if ingress else \
                identity_mark(MARK_MAGIC_PROXY_EGRESS, red.endpoint.identity)
        except ValueError as exc:
            # Without its mark the upstream connection would be redirected again.
            log.warning("proxy.no_mark", redirect=red.to_dict(), error=str(exc))
            writer.transport.abort()
            return
        ctx = ConnectionContext(Flow(red.key.direction, src, dst, _addr(*client), _addr(*original)),
                                src.identity if ingress else dst.identity, lambda: red.policy, original, mark,
                                None if ingress else self.upstreams)
        conn = ProxyConnection(reader, writer, ctx, self.limits, self.access)
        task = asyncio.current_task()
        red.connections.add(conn)
        self.connections += 1
        if task is not None:
            self._tasks.add(task)
        try:
            await conn.run()
        finally:
            self.connections -= 1
            red.connections.discard(conn)
            self._tasks.discard(task)  # type: ignore[arg-type]
