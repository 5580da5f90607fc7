"""Docker networks as the agent sees them: which gateway and MTU endpoints get.

Cilium itself has no network object; Docker does, and the Join reply needs
its gateway. A network is either on our IPAM (the gateway is the node's
router on cilium_host) or on Docker's default IPAM (the pool's gateway is put
on cilium_host so the containers' default route resolves on the host).
"""

from __future__ import annotations

import ipaddress
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

from docker_cilium.errors import BadRequest
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


def check_endpoint_address(net: Network, family: int, address: str, node: NodeAddressing) -> None:
    """Raise BadRequest unless ``address`` (CIDR) can be an endpoint's on ``net``.

    The address becomes a /32 or /128 route to the container and an entry in
    the endpoint map, so one dockerd never allocated (another family's, the
    loopback, an address outside the network's pool or outside the node range
    our IPAM owns) would route someone else's traffic into the container.
    """
    where = "Interface.Address" if family == 4 else "Interface.AddressIPv6"
    ip = ipaddress.ip_interface(address).ip
    if ip.version != family:
        raise BadRequest(f"{where}: {ip} is not an IPv{family} address")
    if ip.is_unspecified or ip.is_loopback or ip.is_multicast or ip == ipaddress.IPv4Address("255.255.255.255"):
        raise BadRequest(f"{where}: {ip} is not a unicast address a container can hold")
    if net.cilium_ipam:
        rng = node.ipv4_range if family == 4 else node.ipv6_range
        if ip not in rng:
            raise BadRequest(f"{where}: {ip} is outside this node's IPv{family} range {rng}, "
                             f"which the network's cilium IPAM hands out")
        if ip == rng.network_address or (family == 4 and ip == rng.broadcast_address):
            raise BadRequest(f"{where}: {ip} is reserved in {rng}")
    pool = net.pool4 if family == 4 else net.pool6
    if pool and ip not in ipaddress.ip_network(pool):
        raise BadRequest(f"{where}: {ip} is outside the network's subnet {pool}")


MIN_MTU = 68  # RFC 791: the least every IPv4 link must carry
MIN_MTU_IPV6 = 1280  # RFC 8200; the kernel drops IPv6 from a link below it
MAX_MTU = 65535  # the largest a veth takes (ETH_MAX_MTU)


def parse_mtu(generic: dict[str, Any], default: int, ipv6: bool = False) -> int:
    """The ``-o com.docker.network.driver.mtu`` of a network, or ``default``.

    Docker's CLI sends the option as a string and its API lets a number
    through; both must be a whole number of bytes in the range the veth pair
    takes. Only ASCII digits count (``int()`` would also take ``'٣٠٠٠'``,
    ``'1_500'`` or a float it silently truncates), and ``true`` is no number.
    """
    raw = generic.get(MTU_OPTION)
    if raw is None or raw == "":
        return default
    mtu: int | None = None
    if isinstance(raw, int) and not isinstance(raw, bool):
        mtu = raw
    elif isinstance(raw, float) and math.isfinite(raw) and raw.is_integer():
        mtu = int(raw)
    elif isinstance(raw, str) and raw.isascii() and raw.isdigit():
        digits = raw.lstrip("0") or "0"
        mtu = int(digits) if len(digits) <= 6 else MAX_MTU + 1  # no int() of a huge string
    low = MIN_MTU_IPV6 if ipv6 else MIN_MTU
    if mtu is None:
        raise BadRequest(f"option {MTU_OPTION}: {_shown(raw)} is not a whole number of bytes "
                         f"(expected an integer in {low}-{MAX_MTU})")
    if not low <= mtu <= MAX_MTU:
        why = " for a network with IPv6" if ipv6 else ""
        raise BadRequest(f"option {MTU_OPTION}: {_shown(raw)} is outside {low}-{MAX_MTU}{why}")
    return mtu


def _shown(value: Any) -> str:
    """``value`` for an error message, cut short: the request may be a megabyte."""
    text = value if isinstance(value, str) and value.isascii() and value.isdigit() else json.dumps(value)
    return text if len(text) <= 40 else f"{text[:40]}..."


def bare_ip(cidr: str | None) -> str | None:
    if not cidr:
        return None
    return str(ipaddress.ip_interface(cidr).ip)


def pool_network(cidr: str | None) -> str | None:
    if not cidr:
        return None
    return str(ipaddress.ip_network(cidr, strict=False))
