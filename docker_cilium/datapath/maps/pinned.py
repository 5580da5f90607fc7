"""Every map pinned under a pin root, listed and read by path (``/v1/map``).

Cilium's ``cilium map list|get`` shows the agent's map caches; ours shows
the kernel's maps themselves: whatever is pinned under the pin root, with
the type, sizes and limit the kernel reports and the entries counted by
walking the keys. Maps the agent knows (:data:`registry.KNOWN_MAP_TYPES`) are
decoded through their ctypes mirrors (addresses, MACs and ports made
readable); any other map shows its raw bytes in hex.
"""

from __future__ import annotations

import ctypes
import errno
import ipaddress
import os
from dataclasses import asdict, dataclass
from typing import Any, Iterator

from docker_cilium.datapath.bpf import (BPFError, be32_to_ip4, check, libbpf, mac_str, map_info, ntohs,
                                        num_possible_cpus)
from docker_cilium.datapath.maps.registry import KNOWN_MAP_TYPES
from docker_cilium.errors import APIError, BadRequest, NotFound

# enum bpf_map_type (<linux/bpf.h>) names as bpftool prints them
MAP_TYPE_NAMES = {1: "hash", 2: "array", 3: "prog_array", 4: "perf_event_array", 5: "percpu_hash",
                  6: "percpu_array", 7: "stack_trace", 8: "cgroup_array", 9: "lru_hash",
                  10: "lru_percpu_hash", 11: "lpm_trie", 12: "array_of_maps", 13: "hash_of_maps",
                  27: "ringbuf"}
PERCPU_TYPES = {5, 6, 10}
# Values that are fds/ids for the kernel, not data: keys are listed, values not.
OPAQUE_VALUE_TYPES = {3, 4, 8, 12, 13}
NO_KEYS_TYPES = {27}  # a ring buffer has no keys
# Arrays hold every index from creation on: their key walk always yields max_entries.
ARRAY_TYPES = {2, 3, 4, 6, 8, 12}
_ADDR4 = {"ip4", "ipv4", "saddr", "daddr", "tunnel_endpoint"}
_ADDR6 = {"ip6", "ipv6", "saddr", "daddr"}
_PORTS = {"sport", "dport", "proxy_port"}  # network byte order in the C structs


class MapReadError(APIError):
    """The agent cannot read a map it pinned (bpf(2) refused): a server-side failure (500)."""

    status = 500


@dataclass
class PinnedMap:
    name: str
    path: str
    type: str
    key_size: int
    value_size: int
    max_entries: int
    entries: int

    def to_dict(self) -> dict[str, Any]:
        return {k.replace("_", "-"): v for k, v in asdict(self).items()}


def _decode_field(name: str, ctype: Any, value: Any) -> Any:
    if name in _ADDR4 and ctype is ctypes.c_uint32:
        return be32_to_ip4(value)
    if name in _PORTS and ctype is ctypes.c_uint16:
        return ntohs(value)
    if isinstance(value, ctypes.Array):
        raw = bytes(value) if ctypes.sizeof(value._type_) == 1 else None
        if raw is None:
            return [decode(v) for v in value]
        if name in _ADDR6 and len(raw) == 16:
            return str(ipaddress.IPv6Address(raw))
        if name == "addr" and len(raw) in (4, 16):  # the prefilter's LPM keys
            return str(ipaddress.ip_address(raw))
        if "mac" in name and len(raw) == 6:
            return mac_str(raw)
        return raw.hex()
    return decode(value)


def decode(obj: Any) -> Any:
    """A ctypes value as JSON-ready data, by the C field names (padding left out).

    A struct with a ``family`` (4 or 6) beside an ``ip4``/``ip6`` union
    shows the one address the family says.
    """
    if isinstance(obj, ctypes._SimpleCData):
        return obj.value
    if not isinstance(obj, (ctypes.Structure, ctypes.Union)):
        return obj
    out: dict[str, Any] = {}
    family = getattr(obj, "family", None) if isinstance(obj, ctypes.Structure) else None
    anonymous = set(getattr(obj, "_anonymous_", ()))
    for name, ctype, *_ in obj._fields_:
        if name.startswith("pad") or name == "reserved":
            continue
        value = getattr(obj, name)
        if name in anonymous and family in (4, 6) and {"ip4", "ip6"} <= {f[0] for f in ctype._fields_}:
            addr = "ip4" if family == 4 else "ip6"
            out["address"] = _decode_field(addr, dict((f[0], f[1]) for f in ctype._fields_)[addr],
                                           getattr(value, addr))
            continue
        out[name] = _decode_field(name, ctype, value)
    return out


def _check_name(name: str) -> None:
    if not name or "/" in name or name in (".", "..") or "\0" in name:
        raise BadRequest(f"invalid map name {name[:80]!r}: expected a pinned map's file name")
    if "." in name:  # bpffs refuses such a lookup (EPERM): no map can be pinned under it
        raise BadRequest(f"invalid map name {name[:80]!r}: a pinned map's name never contains '.'")


class _Map:
    """One pinned map by path: raw key/value buffers, no ctypes mirror needed."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = libbpf().bpf_obj_get(path.encode())
        if self.fd < 0:
            check(self.fd, f"bpf_obj_get({path})")
        try:
            self.info = map_info(self.fd)  # EINVAL: a pinned program, not a map
        except BPFError:
            os.close(self.fd)
            raise
        self.percpu = self.info.type in PERCPU_TYPES
        self.ncpus = num_possible_cpus() if self.percpu else 1

    def close(self) -> None:
        os.close(self.fd)

    def keys(self) -> Iterator[bytes]:
        if self.info.type in NO_KEYS_TYPES:
            return
        lib = libbpf()
        prev = None
        while True:
            nxt = ctypes.create_string_buffer(self.info.key_size)
            ret = lib.bpf_map_get_next_key(self.fd, prev, nxt)
            if ret < 0:
                err = -ret if ret != -1 else ctypes.get_errno()
                if err == errno.ENOENT:
                    return
                check(ret, f"get_next_key {self.path}")
            yield nxt.raw
            prev = nxt

    def lookup(self, key: bytes) -> list[bytes] | None:
        """The value (one per CPU for per-CPU maps); None if the key went away.

        The kernel copies per-CPU values 8-byte aligned, one slot per possible
        CPU, one CPU included: the buffer holds the rounded slots.
        """
        stride = (self.info.value_size + 7) & ~7 if self.percpu else self.info.value_size
        buf = ctypes.create_string_buffer(stride * self.ncpus)
        ret = libbpf().bpf_map_lookup_elem(self.fd, ctypes.create_string_buffer(key, len(key)), buf)
        if ret < 0:
            err = -ret if ret != -1 else ctypes.get_errno()
            if err == errno.ENOENT:
                return None
            check(ret, f"lookup {self.path}")
        return [buf.raw[i * stride:i * stride + self.info.value_size] for i in range(self.ncpus)]

    def describe(self, name: str, entries: int) -> PinnedMap:
        return PinnedMap(name, self.path, MAP_TYPE_NAMES.get(self.info.type, str(self.info.type)),
                         self.info.key_size, self.info.value_size, self.info.max_entries, entries)


def _open(pin_root: str, name: str) -> _Map | None:
    """The pinned map, or None if ``name`` is not a map (a program, a directory)."""
    path = os.path.join(pin_root, name)
    try:
        return _Map(path)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            raise NotFound(f"no map {name} pinned under {pin_root}") from None
        if exc.errno == errno.EINVAL:
            return None
        raise MapReadError(f"cannot open {path}: {exc.strerror or exc}") from None


def list_maps(pin_root: str) -> list[PinnedMap]:
    """Every map pinned directly under ``pin_root`` (an absent root has none)."""
    try:
        names = sorted(os.listdir(pin_root))
    except FileNotFoundError:
        return []
    out = []
    for name in names:
        if not os.path.isfile(os.path.join(pin_root, name)):
            continue
        try:
            m = _open(pin_root, name)
        except NotFound:
            continue  # unpinned meanwhile
        if m is None:
            continue
        try:
            count = m.info.max_entries if m.info.type in ARRAY_TYPES else sum(1 for _ in m.keys())
            out.append(m.describe(name, count))
        except OSError as exc:
            raise MapReadError(f"reading {m.path}: {exc.strerror or exc}") from None
        finally:
            m.close()
    return out


def _decode_raw(raw: bytes, ctype: Any) -> Any:
    if ctype is None or len(raw) != ctypes.sizeof(ctype):
        return raw.hex()
    return decode(ctype.from_buffer_copy(raw))


def read_map(pin_root: str, name: str) -> tuple[PinnedMap, list[dict[str, Any]]]:
    """One map's description and every entry, decoded (``{"key": ..., "value": ...}``)."""
    _check_name(name)
    m = _open(pin_root, name)
    if m is None:
        raise NotFound(f"{os.path.join(pin_root, name)} is pinned but is not a map")
    key_type, value_type, _ = KNOWN_MAP_TYPES.get(name, (None, None, False))
    try:
        entries: list[dict[str, Any]] = []
        for key in list(m.keys()):
            item: dict[str, Any] = {"key": _decode_raw(key, key_type)}
            if m.info.type not in OPAQUE_VALUE_TYPES:
                values = m.lookup(key)
                if values is None:
                    continue  # deleted while we walked
                decoded = [_decode_raw(v, value_type) for v in values]
                item["value"] = decoded if m.percpu else decoded[0]
            entries.append(item)
        return m.describe(name, len(entries)), entries
    except OSError as exc:
        raise MapReadError(f"reading {m.path}: {exc.strerror or exc}") from None
    finally:
        m.close()
