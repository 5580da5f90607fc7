"""cilium_lxc (IP -> endpoint) and cilium_ep_ifindex (host veth ifindex ->
endpoint), kept in step by :class:`EndpointMap` (Cilium's ``pkg/maps/lxcmap``).

Both maps carry the same value, ``struct endpoint_info``; the programs find
their endpoint by ``skb->ifindex`` in cilium_ep_ifindex and a local
destination by address in cilium_lxc.
"""

from __future__ import annotations

import ctypes
import ipaddress
from dataclasses import dataclass

from docker_cilium.datapath.bpf import (
    BpfMap,
    be32_to_ip4,
    ip4_to_be32,
    mac_bytes,
    mac_str,
    u8,
    u16,
    u32,
)

LXC_MAP = "cilium_lxc"
EP_IFINDEX_MAP = "cilium_ep_ifindex"

# bpf_src/lib/common.h: endpoint flags (endpoint_info.flags)
EP_F_INGRESS_ENFORCED = 1 << 0
EP_F_EGRESS_ENFORCED = 1 << 1


class endpoint_info(ctypes.Structure):
    """bpf_src/lib/common.h ``struct endpoint_info`` (value of both maps)."""
    _fields_ = [
        ("ifindex", u32),
        ("lxc_id", u16),
        ("flags", u16),
        ("sec_identity", u32),
        ("mac", u8 * 6),
        ("node_mac", u8 * 6),
        ("ipv4", u32),
        ("ipv6", u8 * 16),
    ]


class _endpoint_addr(ctypes.Union):
    """The anonymous address union inside ``struct endpoint_key``."""
    _fields_ = [("ip4", u32), ("ip6", u8 * 16)]


class endpoint_key(ctypes.Structure):
    """bpf_src/lib/common.h ``struct endpoint_key`` (cilium_lxc key)."""
    _anonymous_ = ("u",)
    _fields_ = [("u", _endpoint_addr), ("family", u8), ("pad", u8 * 3)]


@dataclass
class EndpointInfo:
    ifindex: int                 # host-side veth ifindex
    lxc_id: int                  # endpoint id (u16)
    sec_identity: int
    mac: str                     # container MAC
    node_mac: str                # host-side veth MAC
    ipv4: str | None = None
    ipv6: str | None = None
    ingress_enforced: bool = False
    egress_enforced: bool = False

    def to_c(self) -> endpoint_info:
        if not 0 < self.lxc_id <= 0xFFFF:
            raise ValueError(f"lxc_id {self.lxc_id} does not fit the datapath's u16")
        v = endpoint_info()
        v.ifindex = self.ifindex
        v.lxc_id = self.lxc_id
        v.flags = ((EP_F_INGRESS_ENFORCED if self.ingress_enforced else 0)
                   | (EP_F_EGRESS_ENFORCED if self.egress_enforced else 0))
        v.sec_identity = self.sec_identity
        v.mac[:] = mac_bytes(self.mac)
        v.node_mac[:] = mac_bytes(self.node_mac)
        v.ipv4 = ip4_to_be32(self.ipv4)
        if self.ipv6:
            v.ipv6[:] = ipaddress.IPv6Address(self.ipv6).packed
        return v

    @classmethod
    def from_c(cls, v: endpoint_info) -> "EndpointInfo":
        ip6 = bytes(v.ipv6)
        return cls(ifindex=v.ifindex, lxc_id=v.lxc_id, sec_identity=v.sec_identity,
                   mac=mac_str(v.mac), node_mac=mac_str(v.node_mac),
                   ipv4=be32_to_ip4(v.ipv4) if v.ipv4 else None,
                   ipv6=str(ipaddress.IPv6Address(ip6)) if any(ip6) else None,
                   ingress_enforced=bool(v.flags & EP_F_INGRESS_ENFORCED),
                   egress_enforced=bool(v.flags & EP_F_EGRESS_ENFORCED))


def _ep_key(addr: str) -> endpoint_key:
    k = endpoint_key()
    ip = ipaddress.ip_address(addr)
    if ip.version == 4:
        k.ip4 = ip4_to_be32(addr)
        k.family = 4
    else:
        k.ip6[:] = ip.packed
        k.family = 6
    return k


class EndpointMap:
    """cilium_ep_ifindex (ifindex -> info) + cilium_lxc (IP -> info), kept in step."""

    def __init__(self, by_ifindex: BpfMap, by_ip: BpfMap):
        self.by_ifindex = by_ifindex
        self.by_ip = by_ip

    def upsert(self, ep: EndpointInfo) -> None:
        v = ep.to_c()
        # IP entries first: when from-container sees the ifindex entry, the
        # endpoint is already reachable.
        if ep.ipv4:
            self.by_ip.update(_ep_key(ep.ipv4), v)
        if ep.ipv6:
            self.by_ip.update(_ep_key(ep.ipv6), v)
        self.by_ifindex.update(u32(ep.ifindex), v)

    def delete(self, ifindex: int, ipv4: str | None = None, ipv6: str | None = None) -> None:
        self.by_ifindex.delete(u32(ifindex))
        if ipv4:
            self.by_ip.delete(_ep_key(ipv4))
        if ipv6:
            self.by_ip.delete(_ep_key(ipv6))

    def get(self, ifindex: int) -> EndpointInfo | None:
        v = self.by_ifindex.lookup(u32(ifindex))
        return EndpointInfo.from_c(v) if v is not None else None

    def lookup_ip(self, addr: str) -> EndpointInfo | None:
        v = self.by_ip.lookup(_ep_key(addr))
        return EndpointInfo.from_c(v) if v is not None else None

    def dump(self) -> list[EndpointInfo]:
        return [EndpointInfo.from_c(v) for _, v in self.by_ifindex.items()]

    def addresses(self) -> list[str]:
        """Every address cilium_lxc has an entry for."""
        out = []
        for k, _ in self.by_ip.items():
            raw = bytes(k.ip6)
            out.append(be32_to_ip4(k.ip4) if k.family == 4 else str(ipaddress.IPv6Address(raw)))
        return out

    def delete_address(self, addr: str) -> bool:
        """Drop one cilium_lxc entry (not the ifindex entry of its endpoint)."""
        return self.by_ip.delete(_ep_key(addr))


# pinned name -> (key, value, per-CPU); the structs this module mirrors
MAP_TYPES = {
    EP_IFINDEX_MAP: (u32, endpoint_info, False),
    LXC_MAP: (endpoint_key, endpoint_info, False),
}
C_STRUCTS = (endpoint_info, endpoint_key)
