"""libbpf through ctypes, and the generic typed BPF map.

Everything that talks bpf(2) goes through :func:`libbpf` (libbpf.so.1 with
the prototypes declared below) and reports failures as :class:`BPFError`
via :func:`check`. :class:`BpfMap` is one map fd with its key/value ctypes
classes; the per-map wrappers and the ctypes mirrors of the C structs live
in ``docker_cilium.datapath.maps.<name>`` (as Cilium's ``pkg/maps/<name>``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import ipaddress
import os
import socket
from typing import Any, Iterator

from docker_cilium import defaults

# bpf_map_update_elem() flags
BPF_ANY = 0
BPF_NOEXIST = 1
BPF_EXIST = 2

# C fixed-width types, as the struct mirrors spell them
u8, u16, u32, u64 = ctypes.c_uint8, ctypes.c_uint16, ctypes.c_uint32, ctypes.c_uint64


class BPFError(OSError):
    pass


# --------------------------------------------------------------------------
# libbpf
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
        "bpf_prog_get_fd_by_id": (I, [U32]),
        "bpf_xdp_attach": (I, [I, I, U32, P]),
        "bpf_xdp_detach": (I, [I, U32, P]),
        "bpf_xdp_query": (I, [I, I, P]),
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
        "bpf_program__expected_attach_type": (I, [P]),
        "bpf_link_create": (I, [I, I, I, P]),
        "bpf_link_update": (I, [I, I, P]),
        "perf_buffer__new": (P, [I, ctypes.c_size_t, P, P, P, P]),
        "perf_buffer__new_raw": (P, [I, ctypes.c_size_t, P, P, P, P]),
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


def check(ret: int, what: str) -> int:
    """``ret`` if it is not negative, else :class:`BPFError` naming ``what``
    (libbpf returns ``-errno``, or ``-1`` with errno set)."""
    if ret < 0:
        err = -ret if ret != -1 else ctypes.get_errno()
        raise BPFError(err, f"{what}: {os.strerror(err)}")
    return ret


def num_possible_cpus() -> int:
    return check(libbpf().libbpf_num_possible_cpus(), "libbpf_num_possible_cpus")


def is_mounted(path: str, fstype: str) -> bool:
    """Whether a file system of type ``fstype`` is mounted at ``path``."""
    path = os.path.normpath(path)
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == path and line.split()[2] == fstype for line in f)


def ensure_mounted(path: str, fstype: str, source: str) -> None:
    """Mount ``fstype`` at ``path`` (mount(2) via ctypes) unless already mounted."""
    if is_mounted(path, fstype):
        return
    os.makedirs(path, exist_ok=True)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_void_p]
    if libc.mount(source.encode(), path.encode(), fstype.encode(), 0, None) != 0:
        err = ctypes.get_errno()
        if err != errno.EBUSY:
            raise BPFError(err, f"mount -t {fstype} {source} {path}: {os.strerror(err)}")


def is_bpffs(path: str = defaults.BPFFS_ROOT) -> bool:
    return is_mounted(path, "bpf")


def ensure_bpffs(path: str = defaults.BPFFS_ROOT) -> None:
    """Mount bpffs at ``path`` unless already mounted."""
    ensure_mounted(path, "bpf", "bpf")


class bpf_map_info(ctypes.Structure):
    """The leading fields of ``struct bpf_map_info`` (<linux/bpf.h>)."""
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
    check(libbpf().bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(ln)),
          "bpf_obj_get_info_by_fd")
    return info


class bpf_object_open_opts(ctypes.Structure):
    """struct bpf_object_open_opts (libbpf 1.x <bpf/libbpf.h>)."""
    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("object_name", ctypes.c_char_p),
        ("relaxed_maps", ctypes.c_bool),
        ("pin_root_path", ctypes.c_char_p),
        ("_attach_prog_fd", ctypes.c_uint32),
        ("kconfig", ctypes.c_char_p),
        ("btf_custom_path", ctypes.c_char_p),
        ("kernel_log_buf", ctypes.c_char_p),
        ("kernel_log_size", ctypes.c_size_t),
        ("kernel_log_level", ctypes.c_uint32),
    ]


# --------------------------------------------------------------------------
# byte order and address conversions for map keys and values
# --------------------------------------------------------------------------
#: bits of an LPM key before its address (family and pad), always matched
LPM_KEY_PREFIX_BITS = 32


def fill_lpm_key(key: Any, net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> None:
    """Fill the LPM key layout cilium_ipcache and cilium_tunnel_map share
    ({prefixlen, family, pad[3], ip4|ip6}): prefixlen counts the 32 bits of
    family and pad, always matched, before the address's own."""
    key.prefixlen = LPM_KEY_PREFIX_BITS + net.prefixlen
    key.family = net.version
    if net.version == 4:
        key.ip4 = ip4_to_be32(str(net.network_address))
    else:
        key.ip6[:] = net.network_address.packed


def ip4_to_be32(addr: str | None) -> int:
    """IPv4 string -> u32 whose in-memory bytes are the address (network order)."""
    if not addr:
        return 0
    return int.from_bytes(socket.inet_pton(socket.AF_INET, addr), "little")


def be32_to_ip4(v: int) -> str:
    return socket.inet_ntop(socket.AF_INET, int(v).to_bytes(4, "little"))


def mac_bytes(mac: str) -> bytes:
    b = bytes(int(x, 16) for x in mac.split(":"))
    if len(b) != 6:
        raise ValueError(f"bad MAC {mac!r}")
    return b


def mac_str(b) -> str:
    return ":".join(f"{x:02x}" for x in bytes(b))


def htons(v: int) -> int:
    return socket.htons(v & 0xFFFF)


def ntohs(v: int) -> int:
    return socket.ntohs(v & 0xFFFF)


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
            check(fd, f"bpf_obj_get({path})")
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
            check(ret, f"lookup {self.name}")
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
        check(libbpf().bpf_map_update_elem(self.fd, ctypes.byref(key), ctypes.byref(value),
                                           flags), f"update {self.name}")

    def delete(self, key) -> bool:
        ret = libbpf().bpf_map_delete_elem(self.fd, ctypes.byref(key))
        if ret < 0:
            err = -ret if ret != -1 else ctypes.get_errno()
            if err == errno.ENOENT:
                return False
            check(ret, f"delete {self.name}")
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
                check(ret, f"get_next_key {self.name}")
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
