"""cilium_cidr_v4_dyn / cilium_cidr_v6_dyn: the XDP prefilter's deny lists,
source prefixes in LPM tries (Cilium's ``pkg/maps/cidrmap``). bpf_src/bpf_xdp.c
drops a frame whose source address matches any prefix here."""

from __future__ import annotations

import ctypes
import ipaddress

from docker_cilium.datapath.bpf import BpfMap, u8, u32

CIDR4_MAP = "cilium_cidr_v4_dyn"
CIDR6_MAP = "cilium_cidr_v6_dyn"
#: Prefixes per family each trie holds (bpf_src/lib/prefilter.h).
CIDR_MAP_SIZE = 65536

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class lpm_v4_key(ctypes.Structure):
    """bpf_src/lib/prefilter.h ``struct lpm_v4_key``."""
    _fields_ = [("prefixlen", u32), ("addr", u8 * 4)]


class lpm_v6_key(ctypes.Structure):
    """bpf_src/lib/prefilter.h ``struct lpm_v6_key``."""
    _fields_ = [("prefixlen", u32), ("addr", u8 * 16)]


class lpm_val(ctypes.Structure):
    """bpf_src/lib/prefilter.h ``struct lpm_val``."""
    _fields_ = [("flags", u8)]


class CIDRMap:
    """Both families' deny tries: insert, delete, read back as networks."""

    def __init__(self, v4: BpfMap, v6: BpfMap) -> None:
        self.v4 = v4
        self.v6 = v6

    def _key(self, net: Network) -> tuple[BpfMap, ctypes.Structure]:
        key: ctypes.Structure
        if net.version == 4:
            key, m = lpm_v4_key(), self.v4
        else:
            key, m = lpm_v6_key(), self.v6
        key.prefixlen = net.prefixlen
        key.addr[:] = net.network_address.packed
        return m, key

    def insert(self, net: Network) -> None:
        m, key = self._key(net)
        m.update(key, lpm_val())

    def delete(self, net: Network) -> bool:
        m, key = self._key(net)
        return m.delete(key)

    def dump(self) -> list[Network]:
        """Every prefix in the tries, IPv4 first."""
        out: list[Network] = []
        for m, cls in ((self.v4, ipaddress.IPv4Network), (self.v6, ipaddress.IPv6Network)):
            for k in m.keys():
                out.append(cls((bytes(k.addr), k.prefixlen)))
        return out


# pinned name -> (key, value, per-CPU); the structs this module mirrors
MAP_TYPES = {CIDR4_MAP: (lpm_v4_key, lpm_val, False), CIDR6_MAP: (lpm_v6_key, lpm_val, False)}
C_STRUCTS = (lpm_v4_key, lpm_v6_key, lpm_val)
