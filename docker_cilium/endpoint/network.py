"""Docker networks as the agent sees them: which gateway and MTU endpoints get.

Cilium itself has no network object; Docker does, and the Join reply needs
its gateway. A network is either on our IPAM (the gateway is the node's
router on cilium_host) or on Docker's default IPAM (the pool's gateway is put
on cilium_host so the containers' default route resolves on the host).
"""

from __future__ import annotations

import ipaddress
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

from docker_cilium.ipam.ranges import NodeAddressing

MTU_OPTION = "com.docker.network.driver.mtu"


@dataclass
class Network:
    id: str
    ipv6: bool
    cilium_ipam: bool
    gateway4: str | None = None  # bare IP
    gateway6: str | None = None
    pool4: str | None = None  # CIDR
    pool6: str | None = None
    mtu: int = 1500
    options: dict[str, Any] = field(default_factory=dict)

    def to_record(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_record(cls, d: dict[str, Any]) -> "Network":
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})

    @property
    def host_gateways(self) -> list[str]:
        """Gateways the host must own (Docker-IPAM pools only; ours is the router)."""
        if self.cilium_ipam:
            return []
        return [g for g in (self.gateway4, self.gateway6) if g]


def network_conflict(net: Network, others: Iterable[Network], node: NodeAddressing) -> str | None:
    """Why a Docker-IPAM network cannot be served next to what exists, or None.

    Docker's default IPAM knows nothing of the node range our IPAM hands out,
    so a Docker-IPAM ``--subnet`` inside it would give containers addresses
    that cilium endpoints already hold, and its gateway ``10.X.0.1`` would be
    the router: ``docker network rm`` would then take the router address off
    cilium_host with every route using it. Two Docker-IPAM pools that overlap
    would put two endpoints on one address. Networks on our IPAM share the
    node range on purpose (one allocator, no address twice) and are not
    compared.
    """
    if net.cilium_ipam:
        return None
    for family, gateway, router, node_range in ((4, net.gateway4, node.router4, node.ipv4_range),
                                                 (6, net.gateway6, node.router6, node.ipv6_range)):
        if gateway and ipaddress.ip_address(gateway) == router:
            return (f"gateway {gateway} is this node's router address (on cilium_host); a network on Docker's "
                    f"IPAM cannot use it: use --ipam-driver cilium, or a --subnet outside {node_range}")
        pool = net.pool4 if family == 4 else net.pool6
        if pool and ipaddress.ip_network(pool).overlaps(node_range):  # type: ignore[arg-type]
            return (f"subnet {pool} overlaps this node's IPv{family} range {node_range}, which the cilium IPAM "
                    f"hands out: use --ipam-driver cilium for a subnet inside it, or a --subnet outside it")
    for other in others:
        if other.id == net.id or other.cilium_ipam:
            continue
        for mine, theirs in ((net.pool4, other.pool4), (net.pool6, other.pool6)):
            if mine and theirs and ipaddress.ip_network(mine).overlaps(ipaddress.ip_network(theirs)):
                return f"subnet {mine} overlaps subnet {theirs} of network {other.id[:12]}"
    return None


def parse_mtu(generic: dict[str, Any], default: int) -> int:
    raw = generic.get(MTU_OPTION)
    if raw in (None, ""):
        return default
    try:
        mtu = int(raw)
    except (TypeError, ValueError):
        raise ValueError(f"option {MTU_OPTION}: {raw!r} is not an integer") from None
    if not 68 <= mtu <= 65535:
        raise ValueError(f"option {MTU_OPTION}: {mtu} is outside 68-65535")
    return mtu


def bare_ip(cidr: str | None) -> str | None:
    if not cidr:
        return None
    return str(ipaddress.ip_interface(cidr).ip)


def pool_network(cidr: str | None) -> str | None:
    if not cidr:
        return None
    return str(ipaddress.ip_network(cidr, strict=False))
