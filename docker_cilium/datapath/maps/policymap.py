"""cilium_policy: per-endpoint allow/deny entries with packet and byte
counters (Cilium's ``pkg/maps/policymap``)."""

from __future__ import annotations

import ctypes
import errno
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

from docker_cilium import u8proto
from docker_cilium.datapath.bpf import BPFError, BpfMap, check, htons, libbpf, map_info, ntohs, u8, u16, u32, u64
from docker_cilium.errors import InsufficientStorage

POLICY_MAP = "cilium_policy"

# bpf_src/lib/common.h: directions (policy_key.direction)
POLICY_INGRESS = 0
POLICY_EGRESS = 1
# bpf_src/lib/common.h: a policy_key.proto that only marks "this identity has
# L4 rules", so that a miss is reported as DROP_POLICY_L4; it allows nothing.
POLICY_PROTO_L4_MARKER = 255

#: Entries one endpoint may hold (markers included): Cilium's default
#: per-endpoint policy map size (``--bpf-policy-map-max``). The map itself is
#: shared by all endpoints and sized by bpf_src's POLICY_MAP_SIZE.
ENDPOINT_MAX_ENTRIES = 16384
# Errors the kernel gives when a hash map has no room left.
_FULL_ERRNOS = (errno.E2BIG, errno.ENOMEM, errno.ENOSPC)

PROTOS = u8proto.PROTO_IDS
PROTO_NAMES = u8proto.PROTO_NAMES


class policy_key(ctypes.Structure):
    """bpf_src/lib/common.h ``struct policy_key``."""
    _fields_ = [
        ("sec_identity", u32),
        ("lxc_id", u16),
        ("dport", u16),
        ("proto", u8),
        ("direction", u8),
        ("pad", u8 * 2),
    ]


class policy_entry(ctypes.Structure):
    """bpf_src/lib/common.h ``struct policy_entry``."""
    _fields_ = [
        ("proxy_port", u16),
        ("deny", u8),
        ("pad", u8 * 5),
        ("packets", u64),
        ("bytes", u64),
    ]


def proto_num(proto: int | str) -> int:
    if isinstance(proto, int):
        return proto
    return PROTOS[proto.lower()]


def direction_num(direction: int | str) -> int:
    if isinstance(direction, int):
        return direction
    return {"ingress": POLICY_INGRESS, "egress": POLICY_EGRESS}[direction.lower()]


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
        if type(self.direction) is int and type(self.proto) is int and type(self.deny) is bool:
            return self
        return PolicyEntry(self.identity, direction_num(self.direction), self.dport,
                           proto_num(self.proto), self.proxy_port, bool(self.deny))


def _update_batch() -> Callable[..., int]:
    """libbpf's ``bpf_map_update_batch`` (prototype set on first use)."""
    fn = libbpf().bpf_map_update_batch
    if fn.restype is not ctypes.c_int or not fn.argtypes:
        fn.restype = ctypes.c_int
        fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint32),
                       ctypes.c_void_p]
    return fn  # type: ignore[no-any-return]


class PolicyMapFull(InsufficientStorage):
    """An endpoint's policy does not fit (its own limit or the shared map's room);
    refused before anything was written, or rolled back."""


Want = dict[tuple, PolicyEntry]


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

    def __init__(self, m: BpfMap, endpoint_limit: int = ENDPOINT_MAX_ENTRIES):
        self.m = m
        self.endpoint_limit = endpoint_limit
        # lxc_id -> {entry tuple: (key, proxy_port, deny)}, built by one scan
        # and then kept by our own writes (the agent is the only writer), so
        # a regeneration costs syscalls for its own entries only, not for
        # the whole map.
        self._index: dict[int, dict[tuple, tuple[policy_key, int, bool]]] | None = None

    @staticmethod
    def _tuple(k: policy_key) -> tuple:
        return (k.lxc_id, k.sec_identity, k.direction, ntohs(k.dport), k.proto)

    def _full_index(self) -> dict[int, dict[tuple, tuple[policy_key, int, bool]]]:
        if self._index is None:
            index: dict[int, dict[tuple, tuple[policy_key, int, bool]]] = {}
            for k, v in self.m.items():
                index.setdefault(k.lxc_id, {})[self._tuple(k)] = (k, ntohs(v.proxy_port), bool(v.deny))
            self._index = index
        return self._index

    def _endpoint_index(self, lxc_id: int) -> dict[tuple, tuple[policy_key, int, bool]]:
        return self._full_index().setdefault(lxc_id, {})

    def _want(self, lxc_id: int, entries: Iterable[PolicyEntry]) -> Want:
        """The endpoint's complete entry set, L4 markers included."""
        want: Want = {}
        markers: set[tuple[int, int]] = set()
        for e in entries:
            e = e.normalized()
            want[(lxc_id, e.identity, e.direction, e.dport, e.proto)] = e
            if e.dport or e.proto:
                markers.add((e.identity, e.direction))
        for ident, d in markers:
            want[(lxc_id, ident, d, 0, POLICY_PROTO_L4_MARKER)] = PolicyEntry(
                ident, d, 0, POLICY_PROTO_L4_MARKER)
        return want

    @property
    def max_entries(self) -> int:
        """The shared map's size (POLICY_MAP_SIZE of the loaded datapath)."""
        return map_info(self.m.fd).max_entries

    def endpoint_entries(self, lxc_id: int) -> list[PolicyEntry]:
        """What the endpoint holds now (markers left out: they are derived)."""
        return [PolicyEntry(t[1], t[2], t[3], t[4], proxy, deny)
                for t, (_, proxy, deny) in self._endpoint_index(lxc_id).items()
                if t[4] != POLICY_PROTO_L4_MARKER]

    def check_fits(self, changes: Mapping[int, Iterable[PolicyEntry]]) -> None:
        """Refuse, before anything is written, a set of new endpoint policies
        that would not fit: one endpoint over its limit, or the shared map
        running out of room at any point of writing them in order (each
        endpoint's new entries go in before its stale ones go)."""
        total = sum(len(v) for v in self._full_index().values())
        cap = self.max_entries
        for lxc_id, entries in changes.items():
            want = self._want(lxc_id, entries)
            if len(want) > self.endpoint_limit:
                raise PolicyMapFull(
                    f"endpoint {lxc_id}: its policy needs {len(want)} policy map entries, "
                    f"more than the limit of {self.endpoint_limit} entries per endpoint")
            have = self._endpoint_index(lxc_id)
            added = sum(1 for t in want if t not in have)
            if total + added > cap:
                raise PolicyMapFull(
                    f"endpoint {lxc_id}: its policy needs {added} more entries in {POLICY_MAP}, "
                    f"which has {cap - total} of {cap} free")
            total += added - sum(1 for t in have if t not in want)

    def set_endpoint_policy(self, lxc_id: int, entries: Iterable[PolicyEntry]) -> tuple[int, int]:
        """Make the endpoint's entries exactly ``entries``: add missing ones,
        delete stale ones, keep (and their counters) unchanged ones. L4
        marker entries (so misses report "Policy denied (L4)") are maintained
        automatically. Returns (added_or_changed, deleted).

        All or nothing: an endpoint over its limit is refused before any
        write, and a kernel refusal (map full) part-way undoes what this call
        wrote, so the endpoint keeps exactly its previous entries; both raise
        :class:`PolicyMapFull`."""
        want = self._want(lxc_id, entries)
        if len(want) > self.endpoint_limit:
            raise PolicyMapFull(f"endpoint {lxc_id}: its policy needs {len(want)} policy map entries, "
                                f"more than the limit of {self.endpoint_limit} entries per endpoint")
        have = self._endpoint_index(lxc_id)
        done: list[tuple[tuple, tuple[policy_key, int, bool] | None, policy_entry | None]] = []
        try:
            # add/modify first, then delete: never a window of "deny all"
            self._add_batch(lxc_id, [(t, e) for t, e in want.items() if t not in have], have, done)
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
                done.append((t, known, cur))
                have[t] = (key, e.proxy_port, e.deny)
        except BPFError as exc:
            self._undo(have, done)
            if exc.errno in _FULL_ERRNOS:
                raise PolicyMapFull(f"endpoint {lxc_id}: {POLICY_MAP} is full ({self.max_entries} entries): "
                                    f"{exc.strerror or exc}; its previous policy is kept") from None
            raise
        deleted = 0
        for t in [t for t in have if t not in want]:
            deleted += self.m.delete(have.pop(t)[0])
        return len(done), deleted

    def _add_batch(self, lxc_id: int, new: list[tuple[tuple, PolicyEntry]],
                   have: dict[tuple, tuple[policy_key, int, bool]],
                   done: list[tuple[tuple, tuple[policy_key, int, bool] | None, policy_entry | None]]) -> None:
        """Entries the endpoint does not have yet, in one BPF_MAP_UPDATE_BATCH
        call (10,000 CIDR rules are 20,000 entries: one syscall each cost
        more than resolving them). What the kernel wrote before refusing is
        in ``done`` and ``have`` (so it is undone), and the refusal raises
        BPFError as a single update would."""
        if not new:
            return
        n = len(new)
        keys, values = (policy_key * n)(), (policy_entry * n)()
        for i, (_, e) in enumerate(new):
            keys[i], values[i] = e.key(lxc_id), e.value()
        count = ctypes.c_uint32(n)
        ret = _update_batch()(self.m.fd, keys, values, ctypes.byref(count), None)
        written = n if ret >= 0 else min(count.value, n)
        for i in range(written):
            t, e = new[i]
            done.append((t, None, None))
            have[t] = (keys[i], e.proxy_port, e.deny)
        check(ret, f"update {self.m.name} (batch of {n})")

    def _undo(self, have: dict[tuple, tuple[policy_key, int, bool]],
              done: list[tuple[tuple, tuple[policy_key, int, bool] | None, policy_entry | None]]) -> None:
        """Put back what a failed :meth:`set_endpoint_policy` wrote, newest first."""
        for t, known, cur in reversed(done):
            if known is None:
                self.m.delete(have.pop(t)[0])
            else:
                if cur is not None:
                    self.m.update(known[0], cur)
                have[t] = known

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


# pinned name -> (key, value, per-CPU); the structs this module mirrors
MAP_TYPES = {POLICY_MAP: (policy_key, policy_entry, False)}
C_STRUCTS = (policy_key, policy_entry)
