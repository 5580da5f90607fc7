"""From an endpoint's resolved policy to its proxy redirects and back.

Regeneration asks the proxy for one redirect per (endpoint, direction, port,
TCP) whose entries carry L7 rules (Cilium's pkg/proxy), then writes the
listener ports it got into those entries. Ports are per endpoint, while the
resolved policy (and its plain map entries) may be shared by every endpoint
with the same labels, so the entries with ports are built per endpoint.

An entry with L7 rules written without its proxy port would allow every
connection on the port: wider than the policy. So an endpoint whose policy has
L7 rules fails its regeneration when there is no proxy (``--enable-l7-proxy``
off) instead.
"""

from __future__ import annotations

from typing import Iterable, Mapping

import structlog

from docker_cilium import u8proto
from docker_cilium.datapath.maps.policymap import PolicyEntry as MapPolicyEntry, direction_num
from docker_cilium.errors import BadRequest
from docker_cilium.policy import EndpointPolicy
from docker_cilium.policy.api.l7 import PortRuleHTTP
from docker_cilium.proxy.redirect import EndpointAddr, L7RulesByPeer, ProxyRedirects, RedirectKey

log = structlog.get_logger(__name__)

Redirects = dict[RedirectKey, L7RulesByPeer]


def redirects_of(ep_id: int, pol: EndpointPolicy) -> Redirects:
    """The endpoint's redirects: for each (direction, port, TCP) with L7
    entries, the allowed requests per peer identity (0 = any peer)."""
    out: dict[RedirectKey, dict[int, tuple[PortRuleHTTP, ...]]] = {}
    for e in pol.entries:
        if e.l7 is not None and e.proto == u8proto.TCP:
            out.setdefault(RedirectKey(ep_id, e.direction, e.port, e.proto), {})[e.identity] = e.l7
    return dict(out)


def map_entries(ep_id: int, pol: EndpointPolicy, ports: Mapping[RedirectKey, int]) -> list[MapPolicyEntry]:
    """The endpoint's map entries, those with L7 rules carrying their
    redirect's proxy port. A missing port is an error, never a plain allow."""
    out = []
    for e in pol.entries:
        port = 0
        if e.l7 is not None:
            key = RedirectKey(ep_id, e.direction, e.port, e.proto)
            port = ports.get(key, 0)
            if not port:
                raise RuntimeError(f"endpoint {ep_id}: the proxy returned no port for redirect {key}")
        out.append(MapPolicyEntry(identity=e.identity, direction=e.direction, dport=e.port, proto=e.proto,
                                  proxy_port=port))
    return out


def with_ports(ep_id: int, entries: Iterable[MapPolicyEntry],
               ports: Mapping[RedirectKey, int]) -> list[MapPolicyEntry]:
    """``entries`` (read back from the map, ``proxy_port`` set where they
    redirect) with the ports ``ports`` has now for the same redirects; an
    entry whose redirect has none keeps its port (the datapath drops what it
    cannot deliver to a listener: closed, not open)."""
    out = []
    for e in entries:
        if e.proxy_port:
            direction = "egress" if direction_num(e.direction) == 1 else "ingress"
            key = RedirectKey(ep_id, direction, e.dport, int(e.proto))
            e = MapPolicyEntry(e.identity, e.direction, e.dport, e.proto, ports.get(key, e.proxy_port), e.deny)
        out.append(e)
    return out


def describe(redirects: Mapping[RedirectKey, L7RulesByPeer]) -> str:
    """``ingress 80/TCP, egress 8080/TCP`` for messages."""
    return ", ".join(f"{k.direction} {k.port}/{u8proto.PROTO_NAMES.get(k.proto, k.proto)}" for k in sorted(redirects))


class ProxyGlue:
    """The regenerator's side of the proxy: which endpoints have redirects,
    and the redirects each was last given (a failed batch puts them back)."""

    def __init__(self, proxy: ProxyRedirects | None) -> None:
        self.proxy = proxy
        self.applied: dict[int, Redirects] = {}

    async def update(self, addr: EndpointAddr, redirects: Redirects) -> Mapping[RedirectKey, int]:
        """Make ``redirects`` the endpoint's; returns their ports."""
        if not redirects and addr.id not in self.applied:
            return {}
        if self.proxy is None:
            raise BadRequest(f"endpoint {addr.id}: its policy has L7 rules ({describe(redirects)}) but the "
                             "L7 proxy is disabled (--enable-l7-proxy=false)")
        ports = await self.proxy.update_endpoint(addr, redirects)
        if redirects:
            self.applied[addr.id] = redirects
        else:
            self.applied.pop(addr.id, None)
        return ports

    async def entries(self, addr: EndpointAddr, pol: EndpointPolicy,
                      shared: list[MapPolicyEntry] | None = None) -> list[MapPolicyEntry]:
        """The endpoint's map entries under ``pol``, its redirects updated
        first; ``shared`` (the plain entries of ``pol``) is returned as is
        when ``pol`` has no L7 rules."""
        redirects = redirects_of(addr.id, pol)
        ports = await self.update(addr, redirects)
        if not redirects and shared is not None:
            return shared
        return map_entries(addr.id, pol, ports)

    async def restore(self, addr: EndpointAddr, redirects: Redirects,
                      entries: list[MapPolicyEntry]) -> list[MapPolicyEntry]:
        """A failed batch: the endpoint's ``redirects`` back, and ``entries``
        (read before the batch) with the ports those redirects have now."""
        try:
            ports = await self.update(addr, redirects)
        except Exception as exc:
            log.error("proxy.rollback_failed", endpoint=addr.id, error=str(exc))
            return entries
        return with_ports(addr.id, entries, ports)

    async def remove(self, endpoint_id: int) -> None:
        if self.proxy is not None and self.applied.pop(endpoint_id, None) is not None:
            await self.proxy.remove_endpoint(endpoint_id)
