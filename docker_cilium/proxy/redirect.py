"""What policy regeneration hands the proxy (CONTRACT between the endpoint
regenerator and the proxy).

A redirect is Cilium's: one per (endpoint, direction, L4 port, protocol)
whose resolved policy has L7 rules. It gets a proxy port from
``defaults.PROXY_PORT_MIN..PROXY_PORT_MAX``; the endpoint's policy-map
entries for that port carry it, and the datapath steers the connections
they allow to the listener on that port.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Protocol

from docker_cilium.policy.api.l7 import PortRuleHTTP

#: allowed requests per peer identity (0 = any peer): the union of the rules
#: that apply to that peer on this port; an empty tuple allows nothing.
L7RulesByPeer = Mapping[int, tuple[PortRuleHTTP, ...]]


@dataclass(frozen=True, order=True)
class RedirectKey:
    endpoint_id: int
    direction: str      # "ingress" | "egress" (policy.resolve.DIRECTIONS)
    port: int           # the L4 destination port the rules are for
    proto: int          # u8proto.TCP (L7 only on TCP)


@dataclass(frozen=True)
class EndpointAddr:
    """The endpoint a redirect belongs to, as the proxy needs it."""

    id: int
    identity: int
    ipv4: str | None
    ipv6: str | None


class ProxyRedirects(Protocol):
    """The proxy as the regenerator uses it (``proxy.manager.ProxyManager``;
    a fake in unit tests)."""

    async def update_endpoint(self, ep: EndpointAddr,
                              redirects: Mapping[RedirectKey, L7RulesByPeer]) -> Mapping[RedirectKey, int]:
        """Make ``redirects`` the endpoint's whole set (others of the endpoint
        are removed); returns each one's proxy port (a redirect that stays
        keeps its port). Raises ``errors.APIError`` (e.g. no free port)."""
        ...

    async def remove_endpoint(self, endpoint_id: int) -> None:
        """The endpoint is gone: close its listeners."""
        ...
