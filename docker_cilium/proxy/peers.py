"""Who is at the other end of a proxied connection: an address's identity
and, when it is a local endpoint, the endpoint's ID (for the access log and
the ``--from``/``--to`` filters of ``cilium monitor``)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Protocol

from docker_cilium.identity import reserved


@dataclass(frozen=True)
class Peer:
    identity: int
    endpoint_id: int = 0           # 0: not a local endpoint
    labels: tuple[str, ...] = ()


class PeerLookup(Protocol):
    """Address -> :class:`Peer` (the agent's endpoints and ipcache; a dict in tests)."""

    def peer(self, ip: str) -> Peer: ...


class EndpointView(Protocol):
    """What the lookup reads of an endpoint (``endpoint.model.Endpoint``)."""

    id: int
    identity: int
    ipv4: str | None
    ipv6: str | None


class AgentPeers:
    """The agent's view, as the datapath's ipcache has it: local endpoints,
    the host's addresses, other nodes' endpoints (the shared ipcache),
    node-local CIDR identities (longest prefix), else world. Read once per accepted connection."""

    def __init__(self, endpoints: Callable[[], Iterable[EndpointView]], host_ips: Callable[[], Iterable[str]],
                 cidrs: Callable[[], Mapping[str, int]], labels: Callable[[int], "list[str] | None"],
                 remote: Callable[[str], "int | None"] = lambda ip: None) -> None:
        self._endpoints = endpoints
        self._remote = remote
        self._host_ips = host_ips
        self._cidrs = cidrs
        self._labels = labels

    def _with_labels(self, identity: int, endpoint_id: int = 0) -> Peer:
        return Peer(identity, endpoint_id, tuple(self._labels(identity) or ()))

    def peer(self, ip: str) -> Peer:
        addr = ipaddress.ip_address(ip)
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
            addr = addr.ipv4_mapped
        text = str(addr)
        for ep in self._endpoints():
            if text in (ep.ipv4, ep.ipv6):
                return self._with_labels(ep.identity, ep.id)
        if text in set(self._host_ips()):
            return self._with_labels(reserved.HOST)
        remote = self._remote(text)  # another node's endpoint (shared ipcache), as cilium_ipcache has it
        if remote is not None:
            return self._with_labels(remote)
        best: tuple[int, int] | None = None
        for prefix, num in self._cidrs().items():
            net = ipaddress.ip_network(prefix)
            if net.version == addr.version and addr in net and (best is None or net.prefixlen > best[0]):
                best = (net.prefixlen, num)
        return self._with_labels(best[1] if best else reserved.WORLD)
