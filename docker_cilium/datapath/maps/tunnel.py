"""cilium_tunnel_map: another node's allocation range -> that node's IPv4
address, where the datapath sends the VXLAN-encapsulated packets for it
(Cilium's ``pkg/maps/tunnel``; bpf_src/lib/encap.h reads it when the
destination's ipcache entry names no tunnel endpoint). An LPM trie, so one
entry per range serves every address in it; the node handler keeps one per
other node's IPv4 and IPv6 range."""

from __future__ import annotations

import ctypes
import ipaddress

from docker_cilium.datapath.bpf import LPM_KEY_PREFIX_BITS, BpfMap, be32_to_ip4, fill_lpm_key, ip4_to_be32, u8, u32

TUNNEL_MAP = "cilium_tunnel_map"


class _tunnel_addr(ctypes.Union):
    """The anonymous address union inside ``struct tunnel_map_key``."""
    _fields_ = [("ip4", u32), ("ip6", u8 * 16)]


class tunnel_map_key(ctypes.Structure):
    """bpf_src/lib/common.h ``struct tunnel_map_key``: prefixlen = 32 (family
    and pad) + the range's prefix length."""
    _anonymous_ = ("u",)
    _fields_ = [("prefixlen", u32), ("family", u8), ("pad", u8 * 3), ("u", _tunnel_addr)]


class tunnel_map_value(ctypes.Structure):
    """bpf_src/lib/common.h ``struct tunnel_map_value``."""
    _fields_ = [("endpoint4", u32), ("flags", u8), ("pad", u8 * 3)]


def _key(cidr: str) -> tuple[tunnel_map_key, str]:
    """The trie key of ``cidr`` and its canonical text; ValueError for a bad one."""
    net = ipaddress.ip_network(cidr, strict=False)
    k = tunnel_map_key()
    fill_lpm_key(k, net)
    return k, str(net)


class TunnelMap:
    """cilium_tunnel_map: node range (CIDR) -> tunnel endpoint (node IPv4)."""

    def __init__(self, m: BpfMap) -> None:
        self.m = m

    def upsert(self, cidr: str, endpoint_ipv4: str) -> None:
        """Send ``cidr`` through the tunnel to ``endpoint_ipv4`` (replaces)."""
        key, _ = _key(cidr)
        ep = ipaddress.ip_address(endpoint_ipv4)
        if ep.version != 4:
            raise ValueError(f"tunnel endpoint {endpoint_ipv4} is not an IPv4 address (the underlay is IPv4)")
        v = tunnel_map_value()
        v.endpoint4 = ip4_to_be32(str(ep))
        self.m.update(key, v)

    def delete(self, cidr: str) -> None:
        """Remove ``cidr``'s entry; an absent one is no error."""
        key, _ = _key(cidr)
        self.m.delete(key)

    def dump(self) -> dict[str, str]:
        """Every entry: CIDR -> endpoint IPv4."""
        out = {}
        for k, v in self.m.items():
            plen = k.prefixlen - LPM_KEY_PREFIX_BITS
            if k.family == 4:
                cidr = f"{be32_to_ip4(k.ip4)}/{plen}"
            else:
                cidr = f"{ipaddress.IPv6Address(bytes(k.ip6))}/{plen}"
            out[cidr] = be32_to_ip4(v.endpoint4)
        return out


# pinned name -> (key, value, per-CPU); the structs this module mirrors
MAP_TYPES = {TUNNEL_MAP: (tunnel_map_key, tunnel_map_value, False)}
C_STRUCTS = (tunnel_map_key, tunnel_map_value)
