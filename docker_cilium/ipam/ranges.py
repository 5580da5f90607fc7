"""Node address ranges, derived the way Cilium 1.x did.

Every node owns ``10.X.0.0/16`` where X is the last byte of its first global
IPv4, and the IPv6 range ``f00d::`` + that IPv4 range in hex + ``:0:0/96``
(10.15.0.0 -> f00d::a0f:0:0:0/96). Deriving instead of configuring means two
nodes agree on who owns which range without talking to each other; the
``--ipv4-range``/``--ipv6-range`` flags override it when last bytes collide.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

IPv4Network = ipaddress.IPv4Network
IPv6Network = ipaddress.IPv6Network

IPV6_PREFIX = 0xF00D << 112


def ipv4_range_for(node_ip: str) -> IPv4Network:
    last = int(ipaddress.IPv4Address(node_ip)) & 0xFF
    return ipaddress.IPv4Network(f"10.{last}.0.0/16")


def ipv6_range_for(v4_range: IPv4Network) -> IPv6Network:
    high16 = int(v4_range.network_address) >> 16
    return ipaddress.IPv6Network((IPV6_PREFIX | (high16 << 48), 96))


@dataclass(frozen=True)
class NodeAddressing:
    """The node's ranges and the router addresses that live on cilium_host."""

    node_ip: str
    ipv4_range: IPv4Network
    ipv6_range: IPv6Network

    @property
    def router4(self) -> ipaddress.IPv4Address:
        return self.ipv4_range.network_address + 1

    @property
    def router6(self) -> ipaddress.IPv6Address:
        return self.ipv6_range.network_address + 1

    @classmethod
    def derive(cls, node_ip: str, ipv4_range: str | None = None, ipv6_range: str | None = None) -> "NodeAddressing":
        v4 = ipaddress.IPv4Network(ipv4_range) if ipv4_range else ipv4_range_for(node_ip)
        v6 = ipaddress.IPv6Network(ipv6_range) if ipv6_range else ipv6_range_for(v4)
        return cls(node_ip=node_ip, ipv4_range=v4, ipv6_range=v6)

    def to_dict(self) -> dict[str, str]:
        return {
            "node-ip": self.node_ip,
            "ipv4-range": str(self.ipv4_range),
            "ipv6-range": str(self.ipv6_range),
            "ipv4-router": str(self.router4),
            "ipv6-router": str(self.router6),
        }


def node_element(name: str, node: NodeAddressing, enable_ipv6: bool) -> dict[str, Any]:
    """Cilium's NodeElement for one node: its addresses and allocation ranges."""
    return {"name": name, "primary-address": {
        "ipv4": {"enabled": True, "ip": node.node_ip, "alloc-range": str(node.ipv4_range)},
        "ipv6": {"enabled": enable_ipv6, "ip": str(node.router6), "alloc-range": str(node.ipv6_range)}}}
