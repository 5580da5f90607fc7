"""cilium_ipcache: longest-prefix match of an address to its security
identity (Cilium's ``pkg/maps/ipcache``). A miss means ``reserved:world``
(the datapath's fallback in bpf_src/lib/maps.h)."""

from __future__ import annotations

import ctypes
import ipaddress
from dataclasses import dataclass

from docker_cilium.datapath.bpf import LPM_KEY_PREFIX_BITS, BpfMap, be32_to_ip4, fill_lpm_key, ip4_to_be32, u8, u16, u32

IPCACHE_MAP = "cilium_ipcache"


class _ipcache_addr(ctypes.Union):
    """The anonymous address union inside ``struct ipcache_key``."""
    _fields_ = [("ip4", u32), ("ip6", u8 * 16)]


class ipcache_key(ctypes.Structure):
    """bpf_src/lib/common.h ``struct ipcache_key`` (LPM trie key)."""
    _anonymous_ = ("u",)
    _fields_ = [
        ("prefixlen", u32),
        ("pad1", u16),
        ("pad2", u8),
        ("family", u8),
        ("u", _ipcache_addr),
    ]


class remote_endpoint_info(ctypes.Structure):
    """bpf_src/lib/common.h ``struct remote_endpoint_info``."""
    _fields_ = [("sec_identity", u32), ("tunnel_endpoint", u32), ("flags", u8), ("pad", u8 * 3)]


@dataclass
class IPCacheEntry:
    prefix: str
    identity: int
    tunnel_endpoint: str | None = None
    flags: int = 0


def _ipcache_key(prefix: str) -> ipcache_key:
    net = ipaddress.ip_network(prefix, strict=False)
    k = ipcache_key()
    fill_lpm_key(k, net)
    return k


class IPCache:
    """cilium_ipcache: LPM prefix -> security identity (+ tunnel endpoint)."""

    def __init__(self, m: BpfMap):
        self.m = m

    def upsert(self, prefix: str, identity: int, tunnel_endpoint: str | int = 0,
               flags: int = 0) -> None:
        v = remote_endpoint_info()
        v.sec_identity = identity
        v.tunnel_endpoint = (ip4_to_be32(tunnel_endpoint) if isinstance(tunnel_endpoint, str)
                             else tunnel_endpoint)
        v.flags = flags
        self.m.update(_ipcache_key(prefix), v)

    def delete(self, prefix: str) -> bool:
        return self.m.delete(_ipcache_key(prefix))

    def get(self, prefix: str) -> IPCacheEntry | None:
        """Exact-prefix read (LPM lookup semantics: longest match of the
        prefix's network address at the prefix's length)."""
        v = self.m.lookup(_ipcache_key(prefix))
        if v is None:
            return None
        return IPCacheEntry(prefix, v.sec_identity,
                            be32_to_ip4(v.tunnel_endpoint) if v.tunnel_endpoint else None,
                            v.flags)

    def dump(self) -> dict[str, IPCacheEntry]:
        out = {}
        for k, v in self.m.items():
            plen = k.prefixlen - LPM_KEY_PREFIX_BITS
            if k.family == 4:
                p = f"{be32_to_ip4(k.ip4)}/{plen}"
            else:
                p = f"{ipaddress.IPv6Address(bytes(k.ip6))}/{plen}"
            out[p] = IPCacheEntry(p, v.sec_identity,
                                  be32_to_ip4(v.tunnel_endpoint) if v.tunnel_endpoint else None,
                                  v.flags)
        return out


# pinned name -> (key, value, per-CPU); the structs this module mirrors
MAP_TYPES = {IPCACHE_MAP: (ipcache_key, remote_endpoint_info, False)}
C_STRUCTS = (ipcache_key, remote_endpoint_info)
