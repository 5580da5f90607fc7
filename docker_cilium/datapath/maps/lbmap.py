"""The load balancer maps (Cilium's ``pkg/maps/lbmap``): services, backends
and reverse NAT, IPv4 and IPv6, as laid out in bpf_src/lib/lb.h.

A service occupies ``count + 1`` entries of its services map: slot 0 (the
count and the service ID, which is also its reverse-NAT index) and one slot
per backend naming a backend ID. :meth:`LBMap.upsert_service` writes in the
order the datapath can read at any moment: reverse NAT and backends first,
then the slots, then slot 0 with the new count, and only then drops slots
beyond it; :meth:`LBMap.delete_service` removes slot 0 first. Backend IDs
are the caller's (the service manager allocates them); a backend entry is
deleted only when the caller says no service uses it any more.
"""

from __future__ import annotations

import ctypes
import ipaddress
import socket
from dataclasses import dataclass

from docker_cilium.datapath.bpf import BpfMap, htons, ntohs, u8, u16, u32

LB4_SERVICES_MAP = "cilium_lb4_services_v2"
LB4_BACKENDS_MAP = "cilium_lb4_backends"
LB4_REVNAT_MAP = "cilium_lb4_reverse_nat"
LB6_SERVICES_MAP = "cilium_lb6_services_v2"
LB6_BACKENDS_MAP = "cilium_lb6_backends"
LB6_REVNAT_MAP = "cilium_lb6_reverse_nat"

PROTOCOLS = {"TCP": socket.IPPROTO_TCP, "UDP": socket.IPPROTO_UDP}


class lb4_key(ctypes.Structure):
    """bpf_src/lib/lb.h ``struct lb4_key``."""
    _fields_ = [("address", u8 * 4), ("dport", u16), ("backend_slot", u16), ("proto", u8),
                ("pad", u8 * 3)]


class lb6_key(ctypes.Structure):
    """bpf_src/lib/lb.h ``struct lb6_key``."""
    _fields_ = [("address", u8 * 16), ("dport", u16), ("backend_slot", u16), ("proto", u8),
                ("pad", u8 * 3)]


class lb_service(ctypes.Structure):
    """bpf_src/lib/lb.h ``struct lb_service`` (value of both services maps)."""
    _fields_ = [("backend_id", u32), ("count", u16), ("rev_nat_index", u16), ("flags", u8),
                ("pad", u8 * 3)]


class lb4_backend(ctypes.Structure):
    """bpf_src/lib/lb.h ``struct lb4_backend``."""
    _fields_ = [("address", u8 * 4), ("port", u16), ("proto", u8), ("flags", u8)]


class lb6_backend(ctypes.Structure):
    """bpf_src/lib/lb.h ``struct lb6_backend``."""
    _fields_ = [("address", u8 * 16), ("port", u16), ("proto", u8), ("flags", u8), ("pad", u8 * 4)]


class lb4_reverse_nat(ctypes.Structure):
    """bpf_src/lib/lb.h ``struct lb4_reverse_nat``."""
    _fields_ = [("address", u8 * 4), ("port", u16), ("pad", u16)]


class lb6_reverse_nat(ctypes.Structure):
    """bpf_src/lib/lb.h ``struct lb6_reverse_nat``."""
    _fields_ = [("address", u8 * 16), ("port", u16), ("pad", u8 * 6)]


@dataclass(frozen=True)
class L4Addr:
    """An address, port and protocol name (``TCP``/``UDP``) as the maps hold it."""
    ip: str
    port: int
    protocol: str = "TCP"

    @property
    def family(self) -> int:
        return ipaddress.ip_address(self.ip).version


@dataclass(frozen=True)
class LBService:
    """One service as read back from the maps."""
    id: int
    frontend: L4Addr
    backends: tuple[tuple[int, L4Addr], ...]      # (backend ID, address) per slot, in slot order


class _Family:
    """The three maps of one address family and how to build their keys."""

    def __init__(self, family: int, services: BpfMap, backends: BpfMap, revnat: BpfMap):
        self.family = family
        self.services, self.backends, self.revnat = services, backends, revnat
        self.key_t = lb4_key if family == 4 else lb6_key
        self.backend_t = lb4_backend if family == 4 else lb6_backend
        self.revnat_t = lb4_reverse_nat if family == 4 else lb6_reverse_nat

    def key(self, fe: L4Addr, slot: int):
        k = self.key_t()
        k.address[:] = ipaddress.ip_address(fe.ip).packed
        k.dport = htons(fe.port)
        k.backend_slot = slot
        k.proto = PROTOCOLS[fe.protocol]
        return k

    def addr(self, raw) -> str:
        return str(ipaddress.ip_address(bytes(raw)))


def _proto_name(num: int) -> str:
    return next((n for n, v in PROTOCOLS.items() if v == num), str(num))


class LBMap:
    """cilium_lb{4,6}_{services_v2,backends,reverse_nat}."""

    def __init__(self, lb4_services: BpfMap, lb4_backends: BpfMap, lb4_revnat: BpfMap,
                 lb6_services: BpfMap, lb6_backends: BpfMap, lb6_revnat: BpfMap):
        self._fam = {4: _Family(4, lb4_services, lb4_backends, lb4_revnat),
                     6: _Family(6, lb6_services, lb6_backends, lb6_revnat)}

    @classmethod
    def from_raw(cls, raw: dict[str, BpfMap]) -> "LBMap":
        return cls(raw[LB4_SERVICES_MAP], raw[LB4_BACKENDS_MAP], raw[LB4_REVNAT_MAP],
                   raw[LB6_SERVICES_MAP], raw[LB6_BACKENDS_MAP], raw[LB6_REVNAT_MAP])

    def upsert_backend(self, backend_id: int, addr: L4Addr) -> None:
        f = self._fam[addr.family]
        v = f.backend_t()
        v.address[:] = ipaddress.ip_address(addr.ip).packed
        v.port = htons(addr.port)
        v.proto = PROTOCOLS[addr.protocol]
        f.backends.update(u32(backend_id), v)

    def delete_backend(self, backend_id: int, family: int) -> bool:
        return self._fam[family].backends.delete(u32(backend_id))

    def upsert_service(self, svc_id: int, frontend: L4Addr, backends: list[tuple[int, L4Addr]]) -> None:
        """Make the maps hold ``frontend`` -> ``backends`` (backend ID, address) under ``svc_id``.

        Every backend must be of the frontend's family. Writes the backends
        themselves too; stale backend entries are the caller's to delete.
        """
        f = self._fam[frontend.family]
        if any(b.family != f.family for _, b in backends):
            raise ValueError(f"backends of {frontend.ip} must be IPv{f.family}")
        rn = f.revnat_t()
        rn.address[:] = ipaddress.ip_address(frontend.ip).packed
        rn.port = htons(frontend.port)
        f.revnat.update(u16(svc_id), rn)
        for backend_id, addr in backends:
            self.upsert_backend(backend_id, addr)
        old = f.services.lookup(f.key(frontend, 0))
        old_count = old.count if old is not None else 0
        for slot, (backend_id, _) in enumerate(backends, start=1):
            f.services.update(f.key(frontend, slot), lb_service(backend_id=backend_id,
                                                                rev_nat_index=svc_id))
        f.services.update(f.key(frontend, 0), lb_service(count=len(backends), rev_nat_index=svc_id))
        for slot in range(len(backends) + 1, old_count + 1):
            f.services.delete(f.key(frontend, slot))

    def delete_service(self, svc_id: int, frontend: L4Addr) -> bool:
        """Remove the frontend's slots and its reverse NAT entry; False if it was not there."""
        f = self._fam[frontend.family]
        old = f.services.lookup(f.key(frontend, 0))
        if old is None:
            return False
        f.services.delete(f.key(frontend, 0))
        for slot in range(1, old.count + 1):
            f.services.delete(f.key(frontend, slot))
        f.revnat.delete(u16(svc_id))
        return True

    def backends(self) -> dict[int, L4Addr]:
        """Every backend entry of both families by ID (including those no slot names)."""
        out = {}
        for f in self._fam.values():
            for k, v in f.backends.items():
                out[int(k.value)] = L4Addr(f.addr(v.address), ntohs(v.port), _proto_name(v.proto))
        return out

    def dump(self) -> list[LBService]:
        """Every service the maps hold, by frontend, with its backends in slot order."""
        out = []
        for f in self._fam.values():
            backends = {int(k.value): v for k, v in f.backends.items()}
            slots: dict[tuple, dict[int, lb_service]] = {}
            for k, v in f.services.items():
                fe = (f.addr(k.address), ntohs(k.dport), k.proto)
                slots.setdefault(fe, {})[k.backend_slot] = v
            for (ip, port, proto), by_slot in sorted(slots.items()):
                master = by_slot.get(0)
                if master is None:
                    continue
                bes = []
                for slot in range(1, master.count + 1):
                    s = by_slot.get(slot)
                    b = backends.get(s.backend_id) if s else None
                    if b is not None:
                        bes.append((s.backend_id, L4Addr(f.addr(b.address), ntohs(b.port),
                                                         _proto_name(b.proto))))
                out.append(LBService(master.rev_nat_index, L4Addr(ip, port, _proto_name(proto)),
                                     tuple(bes)))
        return out


# pinned name -> (key, value, per-CPU); the structs this module mirrors
MAP_TYPES = {
    LB4_SERVICES_MAP: (lb4_key, lb_service, False),
    LB4_BACKENDS_MAP: (u32, lb4_backend, False),
    LB4_REVNAT_MAP: (u16, lb4_reverse_nat, False),
    LB6_SERVICES_MAP: (lb6_key, lb_service, False),
    LB6_BACKENDS_MAP: (u32, lb6_backend, False),
    LB6_REVNAT_MAP: (u16, lb6_reverse_nat, False),
}
C_STRUCTS = (lb4_key, lb6_key, lb_service, lb4_backend, lb6_backend, lb4_reverse_nat, lb6_reverse_nat)
