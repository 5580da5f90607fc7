"""Docker networks as the agent sees them: which gateway and MTU endpoints get.

Cilium itself has no network object; Docker does, and the Join reply needs
its gateway. A network is either on our IPAM (the gateway is the node's
router on cilium_host) or on Docker's default IPAM (the pool's gateway is put
on cilium_host so the containers' default route resolves on the host).
"""

from __future__ import annotations

import ipaddress
from dataclasses import asdict, dataclass, field
from typing import Any

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
