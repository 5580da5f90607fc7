"""The socket load balancer's own maps (bpf_src/lib/sock.h): reverse NAT per
socket (Cilium's ``cilium_lb{4,6}_reverse_sk``) and the host netns cookie.

They are pinned beside the datapath's maps but only when the socket LB is
loaded (``--bpf-lb-sock``), so they are not in
:data:`docker_cilium.datapath.maps.registry.MAP_TYPES` (which
:class:`~docker_cilium.datapath.maps.registry.DatapathMaps` requires); the
service maps the hooks read are :mod:`.lbmap`'s.
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
import socket
from dataclasses import dataclass

from docker_cilium.datapath.bpf import BpfMap, ntohs, u8, u16, u32, u64

LB4_REVERSE_SK_MAP = "cilium_lb4_reverse_sk"
LB6_REVERSE_SK_MAP = "cilium_lb6_reverse_sk"
HOSTNS_MAP = "cilium_lb_sock_hostns"

SO_NETNS_COOKIE = getattr(socket, "SO_NETNS_COOKIE", 71)  # <asm-generic/socket.h>, Linux 5.14


class ipv4_revnat_tuple(ctypes.Structure):
    """bpf_src/lib/sock.h ``struct ipv4_revnat_tuple``."""
    _fields_ = [("cookie", u64), ("address", u8 * 4), ("port", u16), ("pad", u16)]


class ipv4_revnat_entry(ctypes.Structure):
    """bpf_src/lib/sock.h ``struct ipv4_revnat_entry``."""
    _fields_ = [("address", u8 * 4), ("port", u16), ("rev_nat_index", u16)]


class ipv6_revnat_tuple(ctypes.Structure):
    """bpf_src/lib/sock.h ``struct ipv6_revnat_tuple``."""
    _fields_ = [("cookie", u64), ("address", u8 * 16), ("port", u16), ("pad", u8 * 6)]


class ipv6_revnat_entry(ctypes.Structure):
    """bpf_src/lib/sock.h ``struct ipv6_revnat_entry``."""
    _fields_ = [("address", u8 * 16), ("port", u16), ("rev_nat_index", u16), ("pad", u8 * 4)]


@dataclass(frozen=True)
class SockRevNat:
    """One reverse entry: socket ``cookie`` talking to ``backend`` was sent to ``frontend``."""
    cookie: int
    backend: tuple[str, int]
    frontend: tuple[str, int]
    rev_nat_index: int


def netns_cookie() -> int:
    """The cookie of the calling thread's network namespace (the kernel's
    ``SO_NETNS_COOKIE``; the hooks compare it with ``bpf_get_netns_cookie``)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        return int.from_bytes(s.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8), "little")


class SockLBMaps:
    """cilium_lb{4,6}_reverse_sk and cilium_lb_sock_hostns, opened by path."""

    def __init__(self, rev4: BpfMap, rev6: BpfMap, hostns: BpfMap):
        self.rev4, self.rev6, self.hostns = rev4, rev6, hostns

    @classmethod
    def open(cls, pin_root: str) -> "SockLBMaps":
        opened: list[BpfMap] = []
        try:
            for name in (LB4_REVERSE_SK_MAP, LB6_REVERSE_SK_MAP, HOSTNS_MAP):
                k, v, percpu = MAP_TYPES[name]
                opened.append(BpfMap.open_pinned(os.path.join(pin_root, name), k, v, percpu))
        except Exception:
            for m in opened:
                m.close()
            raise
        return cls(*opened)

    def close(self) -> None:
        for m in (self.rev4, self.rev6, self.hostns):
            m.close()

    def set_hostns(self, cookie: int) -> None:
        """Translate the sockets of the netns with this cookie (0: none)."""
        self.hostns.update(u32(0), u64(cookie))

    def get_hostns(self) -> int:
        v = self.hostns.lookup(u32(0))
        return int(v.value) if v is not None else 0

    def reverse_entries(self) -> list[SockRevNat]:
        out = []
        for m in (self.rev4, self.rev6):
            for k, v in m.items():
                out.append(SockRevNat(int(k.cookie),
                                      (str(ipaddress.ip_address(bytes(k.address))), ntohs(k.port)),
                                      (str(ipaddress.ip_address(bytes(v.address))), ntohs(v.port)),
                                      int(v.rev_nat_index)))
        return out


# pinned name -> (key, value, per-CPU)
MAP_TYPES = {
    LB4_REVERSE_SK_MAP: (ipv4_revnat_tuple, ipv4_revnat_entry, False),
    LB6_REVERSE_SK_MAP: (ipv6_revnat_tuple, ipv6_revnat_entry, False),
    HOSTNS_MAP: (u32, u64, False),
}
C_STRUCTS = (ipv4_revnat_tuple, ipv4_revnat_entry, ipv6_revnat_tuple, ipv6_revnat_entry)
