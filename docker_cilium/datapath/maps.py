"""Typed access to the datapath's pinned BPF maps (bpf(2) through libbpf/ctypes).

Every map is pinned by name under a pin root (default
``/sys/fs/bpf/tc/globals``), so the CLI and a restarted agent open them by path
with :meth:`DatapathMaps.open` without loading the BPF object.

The ``ctypes.Structure`` classes below mirror ``bpf_src/lib/common.h``
EXACTLY (all padding explicit); ``tests/unit/test_maps_layout.py`` checks
sizes and offsets against the compiled object's BTF.

Conntrack entries are never expired by the kernel (LRU eviction only when the
table is full): the datapath treats an entry whose ``lifetime`` (seconds of
CLOCK_MONOTONIC) has passed as absent, and the agent calls :meth:`CTMap.gc`
periodically to delete them.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import functools
import ipaddress
import os
import socket
import time
from dataclasses import dataclass, field
from typing import Iterable, Iterator

DEFAULT_PIN_ROOT = "/sys/fs/bpf/tc/globals"
BPFFS = "/sys/fs/bpf"
BPF_FS_MAGIC = 0xCAFE4A11

# update flags
BPF_ANY = 0
BPF_NOEXIST = 1
BPF_EXIST = 2

# identities / flags / constants shared with bpf_src/lib/common.h
IDENTITY_HOST = 1
IDENTITY_WORLD = 2
EP_F_INGRESS_ENFORCED = 1 << 0
EP_F_EGRESS_ENFORCED = 1 << 1
POLICY_INGRESS = 0
POLICY_EGRESS = 1
METRIC_INGRESS = 1
METRIC_EGRESS = 2
CT_EGRESS = 0
CT_INGRESS = 1
CT_F_RX_CLOSING = 1 << 0
CT_F_TX_CLOSING = 1 << 1
CT_F_SEEN_NON_SYN = 1 << 2
CT_F_SEEN_REPLY = 1 << 5
CFG_F_TRACE = 1 << 0
CFG_F_DEBUG = 1 << 1
POLICY_PROTO_L4_MARKER = 255

DROP_REASONS = {
    0: "Forwarded",
    130: "Invalid source mac",
    131: "Invalid destination mac",
    132: "Invalid source ip",
    133: "Policy denied (L3)",
    134: "Invalid packet",
    135: "CT: Truncated or invalid header",
    139: "Unsupported L3 protocol",
    152: "No matching local container found",
    155: "CT: Map insertion failed",
    159: "Policy denied (L4)",
    162: "Policy denied (CIDR)",
    175: "First logical datagram fragment not found",
    181: "Policy denied by denylist",
    182: "VLAN traffic disallowed by VLAN filter",
}

PROTOS = {"any": 0, "icmp": 1, "tcp": 6, "udp": 17, "icmpv6": 58, "sctp": 132}
PROTO_NAMES = {v: k.upper() for k, v in PROTOS.items()}

MAP_NAMES = (
    "cilium_ep_ifindex",
    "cilium_lxc",
    "cilium_policy",
    "cilium_ipcache",
    "cilium_ct4",
    "cilium_ct6",
    "cilium_metrics",
    "cilium_events",
    "cilium_config",
    "cilium_ipv4_frag_datagrams",
    "cilium_ipv6_frag_datagrams",
    "cilium_ct_budget",
)


class BPFError(OSError):
    pass


# --------------------------------------------------------------------------
# libbpf through ctypes
# --------------------------------------------------------------------------
_libbpf: ctypes.CDLL | None = None


def libbpf() -> ctypes.CDLL:
    """libbpf.so.1 with the prototypes this package uses (loaded once)."""
    global _libbpf
    if _libbpf is not None:
        return _libbpf
    name = "libbpf.so.1"
    try:
        lib = ctypes.CDLL(name, use_errno=True)
    except OSError:
        found = ctypes.util.find_library("bpf")
        if not found:
            raise BPFError(errno.ENOENT, "libbpf.so.1 not found (apt-get install libbpf1)")
        lib = ctypes.CDLL(found, use_errno=True)
    P, I, U32, S = ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32, ctypes.c_char_p
    protos = {
        "bpf_map_update_elem": (I, [I, P, P, ctypes.c_uint64]),
        "bpf_map_lookup_elem": (I, [I, P, P]),
        "bpf_map_delete_elem": (I, [I, P]),
        "bpf_map_get_next_key": (I, [I, P, P]),
        "bpf_obj_get": (I, [S]),
        "bpf_obj_pin": (I, [I, S]),
        "bpf_obj_get_info_by_fd": (I, [I, P, ctypes.POINTER(U32)]),
        "libbpf_num_possible_cpus": (I, []),
        "bpf_object__open_file": (P, [S, P]),
        "bpf_object__load": (I, [P]),
        "bpf_object__close": (None, [P]),
        "bpf_object__next_map": (P, [P, P]),
        "bpf_object__find_map_by_name": (P, [P, S]),
        "bpf_object__find_program_by_name": (P, [P, S]),
        "bpf_program__fd": (I, [P]),
        "bpf_object__next_program": (P, [P, P]),
        "bpf_program__set_type": (I, [P, I]),
        "bpf_program__name": (S, [P]),
        "bpf_program__pin": (I, [P, S]),
        "bpf_map__fd": (I, [P]),
        "bpf_map__name": (S, [P]),
        "bpf_map__type": (I, [P]),
        "bpf_map__key_size": (U32, [P]),
        "bpf_map__value_size": (U32, [P]),
        "bpf_map__max_entries": (U32, [P]),
        "bpf_map__map_flags": (U32, [P]),
        "bpf_map__set_pin_path": (I, [P, S]),
        "perf_buffer__new": (P, [I, ctypes.c_size_t, P, P, P, P]),
        "perf_buffer__free": (None, [P]),
        "perf_buffer__epoll_fd": (I, [P]),
        "perf_buffer__poll": (I, [P, I]),
        "perf_buffer__consume": (I, [P]),
    }
    for fname, (res, args) in protos.items():
        fn = getattr(lib, fname)
        fn.restype = res
        fn.argtypes = args
    _libbpf = lib
    return lib


def _check(ret: int, what: str) -> int:
    if ret < 0:
        err = -ret if ret != -1 else ctypes.get_errno()
        raise BPFError(err, f"{what}: {os.strerror(err)}")
    return ret


def num_possible_cpus() -> int:
    return _check(libbpf().libbpf_num_possible_cpus(), "libbpf_num_possible_cpus")


def is_bpffs(path: str = BPFFS) -> bool:
    path = os.path.normpath(path)
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == path and line.split()[2] == "bpf" for line in f)


def ensure_bpffs(path: str = BPFFS) -> None:
    """Mount bpffs at ``path`` (mount(2) via ctypes) unless already mounted."""
    if is_bpffs(path):
        return
    os.makedirs(path, exist_ok=True)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_void_p]
    if libc.mount(b"bpf", path.encode(), b"bpf", 0, None) != 0:
        err = ctypes.get_errno()
        if err != errno.EBUSY:
            raise BPFError(err, f"mount -t bpf bpf {path}: {os.strerror(err)}")


class bpf_map_info(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("key_size", ctypes.c_uint32),
        ("value_size", ctypes.c_uint32),
        ("max_entries", ctypes.c_uint32),
        ("map_flags", ctypes.c_uint32),
        ("name", ctypes.c_char * 16),
    ]


def map_info(fd: int) -> bpf_map_info:
    info = bpf_map_info()
    ln = ctypes.c_uint32(ctypes.sizeof(info))
    _check(libbpf().bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(ln)),
           "bpf_obj_get_info_by_fd")
    return info


# --------------------------------------------------------------------------
# C struct mirrors (bpf_src/lib/common.h)
# --------------------------------------------------------------------------
u8, u16, u32, u64 = ctypes.c_uint8, ctypes.c_uint16, ctypes.c_uint32, ctypes.c_uint64


class endpoint_info(ctypes.Structure):
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


class _addr_union(ctypes.Union):
    _fields_ = [("ip4", u32), ("ip6", u8 * 16)]


class endpoint_key(ctypes.Structure):
    _anonymous_ = ("u",)
    _fields_ = [("u", _addr_union), ("family", u8), ("pad", u8 * 3)]


class policy_key(ctypes.Structure):
    _fields_ = [
        ("sec_identity", u32),
        ("lxc_id", u16),
        ("dport", u16),
        ("proto", u8),
        ("direction", u8),
        ("pad", u8 * 2),
    ]


class policy_entry(ctypes.Structure):
    _fields_ = [
        ("proxy_port", u16),
        ("deny", u8),
        ("pad", u8 * 5),
        ("packets", u64),
        ("bytes", u64),
    ]


class ipcache_key(ctypes.Structure):
    _anonymous_ = ("u",)
    _fields_ = [
        ("prefixlen", u32),
        ("pad1", u16),
        ("pad2", u8),
        ("family", u8),
        ("u", _addr_union),
    ]


class remote_endpoint_info(ctypes.Structure):
    _fields_ = [("sec_identity", u32), ("tunnel_endpoint", u32), ("flags", u8), ("pad", u8 * 3)]


class ipv4_ct_tuple(ctypes.Structure):
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
    _fields_ = [
        ("packets", u64),
        ("bytes", u64),
        ("lifetime", u32),
        ("rev_nat_index", u16),
        ("flags", u16),
        ("src_sec_id", u32),
        ("last_report", u32),
    ]


class metrics_key(ctypes.Structure):
    _fields_ = [("reason", u8), ("dir", u8), ("pad", u16)]


class metrics_value(ctypes.Structure):
    _fields_ = [("count", u64), ("bytes", u64)]


class datapath_config(ctypes.Structure):
    _fields_ = [("flags", u32), ("pad", u32), ("reserved", u64 * 3)]


class notify_msg(ctypes.Structure):
    _fields_ = [
        ("type", u8),
        ("subtype", u8),
        ("source", u16),
        ("hash", u32),
        ("len_orig", u32),
        ("len_cap", u32),
        ("src_label", u32),
        ("dst_label", u32),
        ("dst_id", u32),
        ("ifindex", u32),
    ]


C_STRUCTS = {
    "endpoint_info": endpoint_info,
    "endpoint_key": endpoint_key,
    "policy_key": policy_key,
    "policy_entry": policy_entry,
    "ipcache_key": ipcache_key,
    "remote_endpoint_info": remote_endpoint_info,
    "ipv4_ct_tuple": ipv4_ct_tuple,
    "ipv6_ct_tuple": ipv6_ct_tuple,
    "ct_entry": ct_entry,
    "metrics_key": metrics_key,
    "metrics_value": metrics_value,
    "datapath_config": datapath_config,
    "notify_msg": notify_msg,
}


# --------------------------------------------------------------------------
# conversions
# --------------------------------------------------------------------------
def _ip4_to_be32(addr: str | None) -> int:
    """IPv4 string -> u32 whose in-memory bytes are the address (network order)."""
    if not addr:
        return 0
    return int.from_bytes(socket.inet_pton(socket.AF_INET, addr), "little")


def _be32_to_ip4(v: int) -> str:
    return socket.inet_ntop(socket.AF_INET, int(v).to_bytes(4, "little"))


def _mac_bytes(mac: str) -> bytes:
    b = bytes(int(x, 16) for x in mac.split(":"))
    if len(b) != 6:
        raise ValueError(f"bad MAC {mac!r}")
    return b


def _mac_str(b) -> str:
    return ":".join(f"{x:02x}" for x in bytes(b))


def htons(v: int) -> int:
    return socket.htons(v & 0xFFFF)


def ntohs(v: int) -> int:
    return socket.ntohs(v & 0xFFFF)


def proto_num(proto: int | str) -> int:
    if isinstance(proto, int):
        return proto
    return PROTOS[proto.lower()]


def direction_num(direction: int | str) -> int:
    if isinstance(direction, int):
        return direction
    return {"ingress": POLICY_INGRESS, "egress": POLICY_EGRESS}[direction.lower()]


def monotonic_seconds() -> int:
    """The clock the datapath uses for CT lifetimes (bpf_ktime_get_ns)."""
    return int(time.clock_gettime(time.CLOCK_MONOTONIC))


# --------------------------------------------------------------------------
# generic map
# --------------------------------------------------------------------------
class BpfMap:
    """A BPF map fd with typed key/value ctypes classes."""

    def __init__(self, fd: int, key_type, value_type, name: str = "", percpu: bool = False,
                 owns_fd: bool = True):
        self.fd = fd
        self.key_type = key_type
        self.value_type = value_type
        self.name = name
        self.percpu = percpu
        self._owns = owns_fd
        self._ncpus = num_possible_cpus() if percpu else 1
        self._vstride = (ctypes.sizeof(value_type) + 7) & ~7

    @classmethod
    def open_pinned(cls, path: str, key_type, value_type, percpu: bool = False) -> "BpfMap":
        fd = libbpf().bpf_obj_get(path.encode())
        if fd < 0:
            _check(fd, f"bpf_obj_get({path})")
        m = cls(fd, key_type, value_type, os.path.basename(path), percpu)
        info = map_info(fd)
        if info.key_size != ctypes.sizeof(key_type) or info.value_size != ctypes.sizeof(value_type):
            m.close()
            raise BPFError(errno.EINVAL, f"{path}: key/value size {info.key_size}/"
                           f"{info.value_size} != {ctypes.sizeof(key_type)}/"
                           f"{ctypes.sizeof(value_type)} (stale pinned map?)")
        return m

    def close(self) -> None:
        if self.fd >= 0 and self._owns:
            os.close(self.fd)
        self.fd = -1

    def __del__(self):  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:
            pass

    def _vbuf(self):
        if self.percpu:
            return (ctypes.c_uint8 * (self._vstride * self._ncpus))()
        return self.value_type()

    def lookup(self, key):
        """Value for key, or None. Per-CPU maps return a list (one per CPU)."""
        buf = self._vbuf()
        ret = libbpf().bpf_map_lookup_elem(self.fd, ctypes.byref(key), ctypes.byref(buf))
        if ret < 0:
            err = -ret if ret != -1 else ctypes.get_errno()
            if err == errno.ENOENT:
                return None
            _check(ret, f"lookup {self.name}")
        if self.percpu:
            return [self.value_type.from_buffer_copy(buf, i * self._vstride)
                    for i in range(self._ncpus)]
        return buf

    def update(self, key, value, flags: int = BPF_ANY) -> None:
        if self.percpu and not isinstance(value, (list, tuple)):
            value = [value] * self._ncpus
        if self.percpu:
            buf = self._vbuf()
            for i, v in enumerate(value):
                ctypes.memmove(ctypes.addressof(buf) + i * self._vstride, ctypes.addressof(v),
                               ctypes.sizeof(v))
            value = buf
        _check(libbpf().bpf_map_update_elem(self.fd, ctypes.byref(key), ctypes.byref(value),
                                            flags), f"update {self.name}")

    def delete(self, key) -> bool:
        ret = libbpf().bpf_map_delete_elem(self.fd, ctypes.byref(key))
        if ret < 0:
            err = -ret if ret != -1 else ctypes.get_errno()
            if err == errno.ENOENT:
                return False
            _check(ret, f"delete {self.name}")
        return True

    def keys(self) -> Iterator:
        lib = libbpf()
        prev = None
        while True:
            nxt = self.key_type()
            ret = lib.bpf_map_get_next_key(self.fd, ctypes.byref(prev) if prev is not None else None,
                                           ctypes.byref(nxt))
            if ret < 0:
                err = -ret if ret != -1 else ctypes.get_errno()
                if err == errno.ENOENT:
                    return
                _check(ret, f"get_next_key {self.name}")
            yield nxt
            prev = nxt

    def items(self) -> Iterator[tuple]:
        # collect keys first: deleting while iterating restarts hash walks
        for k in list(self.keys()):
            v = self.lookup(k)
            if v is not None:
                yield k, v

    def clear(self) -> int:
        n = 0
        for k in list(self.keys()):
            n += self.delete(k)
        return n


# --------------------------------------------------------------------------
# endpoints
# --------------------------------------------------------------------------
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
        v.mac[:] = _mac_bytes(self.mac)
        v.node_mac[:] = _mac_bytes(self.node_mac)
        v.ipv4 = _ip4_to_be32(self.ipv4)
        if self.ipv6:
            v.ipv6[:] = ipaddress.IPv6Address(self.ipv6).packed
        return v

    @classmethod
    def from_c(cls, v: endpoint_info) -> "EndpointInfo":
        ip6 = bytes(v.ipv6)
        return cls(ifindex=v.ifindex, lxc_id=v.lxc_id, sec_identity=v.sec_identity,
                   mac=_mac_str(v.mac), node_mac=_mac_str(v.node_mac),
                   ipv4=_be32_to_ip4(v.ipv4) if v.ipv4 else None,
                   ipv6=str(ipaddress.IPv6Address(ip6)) if any(ip6) else None,
                   ingress_enforced=bool(v.flags & EP_F_INGRESS_ENFORCED),
                   egress_enforced=bool(v.flags & EP_F_EGRESS_ENFORCED))


def _ep_key(addr: str) -> endpoint_key:
    k = endpoint_key()
    ip = ipaddress.ip_address(addr)
    if ip.version == 4:
        k.ip4 = _ip4_to_be32(addr)
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


# --------------------------------------------------------------------------
# policy
# --------------------------------------------------------------------------
@dataclass(frozen=True)
class PolicyEntry:
    """One allow (or deny) rule of an endpoint. identity 0 = any peer, dport 0
    and proto 0 = all ports/protocols (L3-only). dport is host byte order."""
    identity: int
    direction: int | str = POLICY_INGRESS
    dport: int = 0
    proto: int | str = 0
    proxy_port: int = 0
    deny: bool = False

    def key(self, lxc_id: int) -> policy_key:
        if not 0 <= lxc_id <= 0xFFFF or not 0 <= self.dport <= 0xFFFF:
            raise ValueError(f"lxc_id {lxc_id} / dport {self.dport} out of u16 range")
        k = policy_key()
        k.sec_identity = self.identity
        k.lxc_id = lxc_id
        k.dport = htons(self.dport)
        k.proto = proto_num(self.proto)
        k.direction = direction_num(self.direction)
        return k

    def value(self) -> policy_entry:
        v = policy_entry()
        v.proxy_port = htons(self.proxy_port)
        v.deny = 1 if self.deny else 0
        return v

    def normalized(self) -> "PolicyEntry":
        return PolicyEntry(self.identity, direction_num(self.direction), self.dport,
                           proto_num(self.proto), self.proxy_port, bool(self.deny))


@dataclass
class PolicyStat:
    lxc_id: int
    identity: int
    direction: int
    dport: int
    proto: int
    proxy_port: int
    deny: bool
    packets: int
    bytes: int

    @property
    def direction_name(self) -> str:
        return "Ingress" if self.direction == POLICY_INGRESS else "Egress"

    @property
    def port_proto(self) -> str:
        if not self.dport and not self.proto:
            return "ANY"
        return f"{self.dport}/{PROTO_NAMES.get(self.proto, self.proto)}"


class PolicyMap:
    """cilium_policy: per-endpoint allow entries with packet/byte counters."""

    def __init__(self, m: BpfMap):
        self.m = m
        # lxc_id -> {entry tuple: (key, proxy_port, deny)}, built by one scan
        # and then kept by our own writes (the agent is the only writer), so
        # a regeneration costs syscalls for its own entries only, not for
        # the whole map.
        self._index: dict[int, dict[tuple, tuple[policy_key, int, bool]]] | None = None

    @staticmethod
    def _tuple(k: policy_key) -> tuple:
        return (k.lxc_id, k.sec_identity, k.direction, ntohs(k.dport), k.proto)

    def _endpoint_index(self, lxc_id: int) -> dict[tuple, tuple[policy_key, int, bool]]:
        if self._index is None:
            index: dict[int, dict[tuple, tuple[policy_key, int, bool]]] = {}
            for k, v in self.m.items():
                index.setdefault(k.lxc_id, {})[self._tuple(k)] = (k, ntohs(v.proxy_port), bool(v.deny))
            self._index = index
        return self._index.setdefault(lxc_id, {})

    def set_endpoint_policy(self, lxc_id: int, entries: Iterable[PolicyEntry]) -> tuple[int, int]:
        """Make the endpoint's entries exactly ``entries``: add missing ones,
        delete stale ones, keep (and their counters) unchanged ones. L4
        marker entries (so misses report "Policy denied (L4)") are maintained
        automatically. Returns (added_or_changed, deleted)."""
        want: dict[tuple, PolicyEntry] = {}
        markers: set[tuple[int, int]] = set()
        for e in entries:
            e = e.normalized()
            want[(lxc_id, e.identity, e.direction, e.dport, e.proto)] = e
            if e.dport or e.proto:
                markers.add((e.identity, e.direction))
        for ident, d in markers:
            want[(lxc_id, ident, d, 0, POLICY_PROTO_L4_MARKER)] = PolicyEntry(
                ident, d, 0, POLICY_PROTO_L4_MARKER)
        have = self._endpoint_index(lxc_id)
        added = deleted = 0
        # add/modify first, then delete: never a window of "deny all"
        for t, e in want.items():
            known = have.get(t)
            if known is not None and known[1] == e.proxy_port and known[2] == e.deny:
                continue
            v = e.value()
            cur = self.m.lookup(known[0]) if known is not None else None
            if cur is not None:
                v.packets, v.bytes = cur.packets, cur.bytes
            key = e.key(lxc_id)
            self.m.update(key, v)
            have[t] = (key, e.proxy_port, e.deny)
            added += 1
        for t in [t for t in have if t not in want]:
            deleted += self.m.delete(have.pop(t)[0])
        return added, deleted

    def delete_endpoint(self, lxc_id: int) -> int:
        have = self._endpoint_index(lxc_id)
        n = 0
        for key, _, _ in have.values():
            n += self.m.delete(key)
        have.clear()
        return n

    def dump(self, lxc_id: int | None = None, include_markers: bool = False) -> list[PolicyStat]:
        out = []
        for k, v in self.m.items():
            if lxc_id is not None and k.lxc_id != lxc_id:
                continue
            if k.proto == POLICY_PROTO_L4_MARKER and not include_markers:
                continue
            out.append(PolicyStat(k.lxc_id, k.sec_identity, k.direction, ntohs(k.dport),
                                  k.proto, ntohs(v.proxy_port), bool(v.deny), v.packets,
                                  v.bytes))
        out.sort(key=lambda s: (s.lxc_id, s.direction, s.identity, s.dport, s.proto))
        return out

    def get(self, lxc_id: int, entry: PolicyEntry) -> PolicyStat | None:
        v = self.m.lookup(entry.key(lxc_id))
        if v is None:
            return None
        e = entry.normalized()
        return PolicyStat(lxc_id, e.identity, e.direction, e.dport, e.proto,
                          ntohs(v.proxy_port), bool(v.deny), v.packets, v.bytes)


# --------------------------------------------------------------------------
# ipcache
# --------------------------------------------------------------------------
@dataclass
class IPCacheEntry:
    prefix: str
    identity: int
    tunnel_endpoint: str | None = None
    flags: int = 0


def _ipcache_key(prefix: str) -> ipcache_key:
    net = ipaddress.ip_network(prefix, strict=False)
    k = ipcache_key()
    k.prefixlen = 32 + net.prefixlen
    if net.version == 4:
        k.family = 4
        k.ip4 = _ip4_to_be32(str(net.network_address))
    else:
        k.family = 6
        k.ip6[:] = net.network_address.packed
    return k


class IPCache:
    """cilium_ipcache: LPM prefix -> security identity (+ tunnel endpoint)."""

    def __init__(self, m: BpfMap):
        self.m = m

    def upsert(self, prefix: str, identity: int, tunnel_endpoint: str | int = 0,
               flags: int = 0) -> None:
        v = remote_endpoint_info()
        v.sec_identity = identity
        v.tunnel_endpoint = (_ip4_to_be32(tunnel_endpoint) if isinstance(tunnel_endpoint, str)
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
                            _be32_to_ip4(v.tunnel_endpoint) if v.tunnel_endpoint else None,
                            v.flags)

    def dump(self) -> dict[str, IPCacheEntry]:
        out = {}
        for k, v in self.m.items():
            plen = k.prefixlen - 32
            if k.family == 4:
                p = f"{_be32_to_ip4(k.ip4)}/{plen}"
            else:
                p = f"{ipaddress.IPv6Address(bytes(k.ip6))}/{plen}"
            out[p] = IPCacheEntry(p, v.sec_identity,
                                  _be32_to_ip4(v.tunnel_endpoint) if v.tunnel_endpoint else None,
                                  v.flags)
        return out


# --------------------------------------------------------------------------
# conntrack
# --------------------------------------------------------------------------
@dataclass
class CTEntry:
    family: int
    saddr: str
    daddr: str
    sport: int              # host order (ICMP echo: the echo id)
    dport: int
    proto: int
    direction: int          # CT_EGRESS / CT_INGRESS (which side opened it)
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
                fam, s, d = 4, _be32_to_ip4(k.saddr), _be32_to_ip4(k.daddr)
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
                s, d = _be32_to_ip4(k.saddr), _be32_to_ip4(k.daddr)
            else:
                s = str(ipaddress.IPv6Address(bytes(k.saddr)))
                d = str(ipaddress.IPv6Address(bytes(k.daddr)))
            if s in want or d in want:
                n += m.delete(k)
        return n

    def gc(self, now: int | None = None) -> int:
        """Delete entries whose lifetime has passed; returns how many."""
        now = monotonic_seconds() if now is None else now
        n = 0
        for m, k, v in list(self._entries()):
            if v.lifetime < now:
                n += m.delete(k)
        return n


# --------------------------------------------------------------------------
# metrics / config
# --------------------------------------------------------------------------
class Metrics:
    """cilium_metrics (per-CPU): (reason, direction) -> packets, bytes."""

    def __init__(self, m: BpfMap):
        self.m = m

    def dump(self) -> dict[tuple[int, int], tuple[int, int]]:
        out = {}
        for k, vals in self.m.items():
            out[(k.reason, k.dir)] = (sum(v.count for v in vals), sum(v.bytes for v in vals))
        return out

    def count(self, reason: int, direction: int | None = None) -> int:
        return sum(c for (r, d), (c, _) in self.dump().items()
                   if r == reason and (direction is None or d == direction))


class ConfigMap:
    """cilium_config[0]: datapath runtime flags (CFG_F_TRACE, CFG_F_DEBUG)."""

    def __init__(self, m: BpfMap):
        self.m = m

    def get(self) -> datapath_config:
        v = self.m.lookup(u32(0))
        return v if v is not None else datapath_config()

    def set_flags(self, flags: int) -> None:
        v = self.get()
        v.flags = flags
        self.m.update(u32(0), v)

    def set_trace(self, enabled: bool) -> None:
        v = self.get()
        self.set_flags((v.flags | CFG_F_TRACE) if enabled else (v.flags & ~CFG_F_TRACE))


# --------------------------------------------------------------------------
# events (perf ring)
# --------------------------------------------------------------------------
NOTIFY_DROP = 1
NOTIFY_DEBUG = 2
NOTIFY_CAPTURE = 3
NOTIFY_TRACE = 4
TRACE_OBS_POINTS = {0: "to-endpoint", 1: "to-proxy", 2: "to-host", 3: "to-stack",
                    4: "to-overlay", 5: "from-endpoint"}


@dataclass
class DatapathEvent:
    cpu: int
    type: int               # NOTIFY_DROP / NOTIFY_TRACE
    subtype: int            # drop reason / trace observation point
    source: int             # lxc_id
    hash: int
    len_orig: int
    len_cap: int
    src_label: int
    dst_label: int
    dst_id: int
    ifindex: int
    data: bytes             # first len_cap bytes of the packet (Ethernet frame)

    @property
    def reason(self) -> str:
        return DROP_REASONS.get(self.subtype, str(self.subtype))


_SAMPLE_CB = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p,
                              ctypes.c_uint32)
_LOST_CB = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int, ctypes.c_uint64)


class EventReader:
    """Reads cilium_events (drop / trace notifications) through libbpf's
    perf_buffer. Creating a reader installs ITS per-CPU ring fds into the map,
    so exactly one reader should exist at a time (the agent's monitor, which
    fans events out). ``fileno()`` is an epoll fd usable with
    ``loop.add_reader``; call :meth:`consume` / :meth:`poll` to get events."""

    def __init__(self, events_fd: int, page_cnt: int = 64):
        self.events: list[DatapathEvent] = []
        self.lost = 0
        self._sample = _SAMPLE_CB(self._on_sample)
        self._lost = _LOST_CB(self._on_lost)
        pb = libbpf().perf_buffer__new(events_fd, page_cnt, self._sample, self._lost, None, None)
        if not pb:
            _check(-ctypes.get_errno() or -errno.EINVAL, "perf_buffer__new")
        self._pb = pb

    def _on_sample(self, _ctx, cpu, data, size):
        raw = ctypes.string_at(data, size)
        hdr_len = ctypes.sizeof(notify_msg)
        if size < hdr_len:
            return
        h = notify_msg.from_buffer_copy(raw[:hdr_len])
        self.events.append(DatapathEvent(cpu, h.type, h.subtype, h.source, h.hash, h.len_orig,
                                         h.len_cap, h.src_label, h.dst_label, h.dst_id,
                                         h.ifindex, raw[hdr_len:hdr_len + h.len_cap]))

    def _on_lost(self, _ctx, _cpu, cnt):
        self.lost += cnt

    def fileno(self) -> int:
        return libbpf().perf_buffer__epoll_fd(self._pb)

    def poll(self, timeout_ms: int = 100) -> list[DatapathEvent]:
        ret = libbpf().perf_buffer__poll(self._pb, timeout_ms)
        if ret < 0 and -ret != errno.EINTR:
            _check(ret, "perf_buffer__poll")
        out, self.events = self.events, []
        return out

    def consume(self) -> list[DatapathEvent]:
        libbpf().perf_buffer__consume(self._pb)
        out, self.events = self.events, []
        return out

    def close(self) -> None:
        if self._pb:
            libbpf().perf_buffer__free(self._pb)
            self._pb = None


# --------------------------------------------------------------------------
# all maps
# --------------------------------------------------------------------------
MAP_TYPES = {
    "cilium_ep_ifindex": (u32, endpoint_info, False),
    "cilium_lxc": (endpoint_key, endpoint_info, False),
    "cilium_policy": (policy_key, policy_entry, False),
    "cilium_ipcache": (ipcache_key, remote_endpoint_info, False),
    "cilium_ct4": (ipv4_ct_tuple, ct_entry, False),
    "cilium_ct6": (ipv6_ct_tuple, ct_entry, False),
    "cilium_metrics": (metrics_key, metrics_value, True),
    "cilium_events": (u32, u32, False),
    "cilium_config": (u32, datapath_config, False),
}


@dataclass
class DatapathMaps:
    raw: dict[str, BpfMap] = field(default_factory=dict)

    @classmethod
    def open(cls, pin_root: str = DEFAULT_PIN_ROOT) -> "DatapathMaps":
        """Open every pinned map by path (no BPF object needed)."""
        raw = {}
        try:
            for name, (k, v, percpu) in MAP_TYPES.items():
                raw[name] = BpfMap.open_pinned(os.path.join(pin_root, name), k, v, percpu)
        except Exception:
            for m in raw.values():
                m.close()
            raise
        return cls(raw)

    def close(self) -> None:
        for m in self.raw.values():
            m.close()

    @property
    def endpoints(self) -> EndpointMap:
        return EndpointMap(self.raw["cilium_ep_ifindex"], self.raw["cilium_lxc"])

    @functools.cached_property
    def policy(self) -> PolicyMap:
        # One instance per open: it carries the write index of the map.
        return PolicyMap(self.raw["cilium_policy"])

    @property
    def ipcache(self) -> IPCache:
        return IPCache(self.raw["cilium_ipcache"])

    @property
    def ct(self) -> CTMap:
        return CTMap(self.raw["cilium_ct4"], self.raw["cilium_ct6"])

    @property
    def metrics(self) -> Metrics:
        return Metrics(self.raw["cilium_metrics"])

    @property
    def config(self) -> ConfigMap:
        return ConfigMap(self.raw["cilium_config"])

    @property
    def events_fd(self) -> int:
        return self.raw["cilium_events"].fd

    def event_reader(self, page_cnt: int = 64) -> EventReader:
        return EventReader(self.events_fd, page_cnt)
