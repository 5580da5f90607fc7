"""cilium_ct4 and cilium_ct6: the datapath's connection tracking tables
(Cilium's ``pkg/maps/ctmap``).

Conntrack entries are never expired by the kernel (LRU eviction only when the
table is full): the datapath treats an entry whose ``lifetime`` (seconds of
CLOCK_MONOTONIC) has passed as absent, and the agent calls :meth:`CTMap.gc`
periodically to delete them.
"""

from __future__ import annotations

import ctypes
import ipaddress
import time
from dataclasses import dataclass
from typing import Iterator

from docker_cilium.datapath.bpf import BpfMap, be32_to_ip4, ntohs, u8, u16, u32, u64

CT4_MAP = "cilium_ct4"
CT6_MAP = "cilium_ct6"

# bpf_src/lib/common.h: conntrack key flags (which program created the entry)
CT_EGRESS = 0
CT_INGRESS = 1
CT_SERVICE = 2
# bpf_src/lib/common.h: conntrack entry flags (ct_entry.flags)
CT_F_RX_CLOSING = 1 << 0
CT_F_TX_CLOSING = 1 << 1
CT_F_SEEN_NON_SYN = 1 << 2
CT_F_PROXY_REDIRECT = 1 << 4  # the flow goes to the L7 proxy (`cilium bpf proxy list`)
CT_F_SEEN_REPLY = 1 << 5
CT_F_LOOPBACK = 1 << 6


class ipv4_ct_tuple(ctypes.Structure):
    """bpf_src/lib/common.h ``struct ipv4_ct_tuple`` (cilium_ct4 key)."""
    _fields_ = [
        ("saddr", u32),
        ("daddr", u32),
        ("sport", u16),
        ("dport", u16),
        ("nexthdr", u8),
        ("flags", u8),
        ("pad", u8 * 2),
    ]


class ipv6_ct_tuple(ctypes.Structure):
    """bpf_src/lib/common.h ``struct ipv6_ct_tuple`` (cilium_ct6 key)."""
    _fields_ = [
        ("saddr", u8 * 16),
        ("daddr", u8 * 16),
        ("sport", u16),
        ("dport", u16),
        ("nexthdr", u8),
        ("flags", u8),
        ("pad", u8 * 2),
    ]


class ct_entry(ctypes.Structure):
    """bpf_src/lib/common.h ``struct ct_entry`` (value of both tables)."""
    _fields_ = [
        ("packets", u64),
        ("bytes", u64),
        ("lifetime", u32),
        ("rev_nat_index", u16),
        ("flags", u16),
        ("src_sec_id", u32),
        ("last_report", u32),
    ]


def monotonic_seconds() -> int:
    """The clock the datapath uses for CT lifetimes (bpf_ktime_get_ns)."""
    return int(time.clock_gettime(time.CLOCK_MONOTONIC))


@dataclass
class CTEntry:
    family: int
    saddr: str
    daddr: str
    sport: int              # host order (ICMP echo: the echo id)
    dport: int
    proto: int
    direction: int          # CT_EGRESS / CT_INGRESS (which side opened it) / CT_SERVICE
    packets: int
    bytes: int
    lifetime: int           # expiry, monotonic seconds
    flags: int
    src_sec_id: int
    rev_nat_index: int = 0

    def expires_in(self, now: int | None = None) -> int:
        return self.lifetime - (monotonic_seconds() if now is None else now)


class CTMap:
    """cilium_ct4 + cilium_ct6."""

    def __init__(self, ct4: BpfMap, ct6: BpfMap):
        self.ct4 = ct4
        self.ct6 = ct6

    def _entries(self) -> Iterator[tuple[BpfMap, object, ct_entry]]:
        for m in (self.ct4, self.ct6):
            for k, v in m.items():
                yield m, k, v

    def dump(self) -> list[CTEntry]:
        out = []
        for m, k, v in self._entries():
            if m is self.ct4:
                fam, s, d = 4, be32_to_ip4(k.saddr), be32_to_ip4(k.daddr)
            else:
                fam = 6
                s = str(ipaddress.IPv6Address(bytes(k.saddr)))
                d = str(ipaddress.IPv6Address(bytes(k.daddr)))
            out.append(CTEntry(fam, s, d, ntohs(k.sport), ntohs(k.dport), k.nexthdr, k.flags,
                               v.packets, v.bytes, v.lifetime, v.flags, v.src_sec_id,
                               v.rev_nat_index))
        return out

    def flush(self) -> int:
        return self.ct4.clear() + self.ct6.clear()

    def flush_addresses(self, *addrs: str | None) -> int:
        """Delete every entry whose saddr or daddr is one of ``addrs`` (an
        endpoint going away). Returns how many were deleted."""
        want = {str(ipaddress.ip_address(a)) for a in addrs if a}
        n = 0
        for m, k, _v in list(self._entries()):
            if m is self.ct4:
                s, d = be32_to_ip4(k.saddr), be32_to_ip4(k.daddr)
            else:
                s = str(ipaddress.IPv6Address(bytes(k.saddr)))
                d = str(ipaddress.IPv6Address(bytes(k.daddr)))
            if s in want or d in want:
                n += m.delete(k)
        return n

    def service_backends(self, now: int | None = None) -> set[int]:
        """Backend IDs named by live CT_SERVICE entries (connections still on them)."""
        now = monotonic_seconds() if now is None else now
        return {v.src_sec_id for _m, k, v in self._entries() if k.flags == CT_SERVICE and v.lifetime >= now}

    def gc(self, now: int | None = None) -> int:
        """Delete entries whose lifetime has passed; returns how many."""
        now = monotonic_seconds() if now is None else now
        n = 0
        for m, k, v in list(self._entries()):
            if v.lifetime < now:
                n += m.delete(k)
        return n


# pinned name -> (key, value, per-CPU); the structs this module mirrors
MAP_TYPES = {
    CT4_MAP: (ipv4_ct_tuple, ct_entry, False),
    CT6_MAP: (ipv6_ct_tuple, ct_entry, False),
}
C_STRUCTS = (ipv4_ct_tuple, ipv6_ct_tuple, ct_entry)
