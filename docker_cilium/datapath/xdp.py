"""The XDP prefilter program (bpf_src/bpf_xdp.c): loaded once, attached to one device.

* :func:`install` loads the compiled object through libbpf with the endpoint
  datapath's pin root, so its maps (the CIDR tries, ``cilium_metrics``) are
  the pinned ones, reused by name; pins the program as
  ``<prog dir>/cil_xdp_entry`` (atomically replacing an older pin); takes the
  previously pinned prefilter off any other device it ran on (the flag
  changed); and attaches it to the device in native (driver) or generic
  (skb) mode. Only the program pinned under our program dir counts as ours
  elsewhere: another agent's prefilter (its own bpf root) is left alone.
* The kernel holds one program per mode on a device and refuses both modes at
  once: our program in the other mode is detached first. A program that is
  not ours is never replaced: :class:`XDPError` names it.
* Netlink XDP attachments hold their own program reference: the prefilter
  keeps dropping while the agent is down, until :func:`remove` (agent started
  without ``--prefilter-device``) or ``cilium cleanup`` takes it off.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
from dataclasses import dataclass

import structlog

from docker_cilium.datapath.bpf import BPFError, bpf_object_open_opts, check, libbpf

log = structlog.get_logger(__name__)

#: The program's name in bpf_xdp.c, its pin under the program dir, and what
#: marks an attached program as a prefilter of ours.
XDP_PROGRAM = "cil_xdp_entry"
XDP_SOURCE = "bpf_xdp.c"
# <linux/if_link.h>
XDP_FLAGS_SKB_MODE = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2
MODES = {"native": XDP_FLAGS_DRV_MODE, "generic": XDP_FLAGS_SKB_MODE}


class XDPError(BPFError):
    pass


class bpf_xdp_query_opts(ctypes.Structure):
    """libbpf 1.x ``struct bpf_xdp_query_opts`` (the fields 1.1 knows)."""
    _fields_ = [("sz", ctypes.c_size_t), ("prog_id", ctypes.c_uint32), ("drv_prog_id", ctypes.c_uint32),
                ("hw_prog_id", ctypes.c_uint32), ("skb_prog_id", ctypes.c_uint32), ("attach_mode", ctypes.c_uint8)]


class _prog_info(ctypes.Structure):
    """The leading fields of ``struct bpf_prog_info`` up to its name."""
    _fields_ = [("type", ctypes.c_uint32), ("id", ctypes.c_uint32), ("tag", ctypes.c_uint8 * 8),
                ("jited_prog_len", ctypes.c_uint32), ("xlated_prog_len", ctypes.c_uint32),
                ("jited_prog_insns", ctypes.c_uint64), ("xlated_prog_insns", ctypes.c_uint64),
                ("load_time", ctypes.c_uint64), ("created_by_uid", ctypes.c_uint32),
                ("nr_map_ids", ctypes.c_uint32), ("map_ids", ctypes.c_uint64), ("name", ctypes.c_char * 16)]


@dataclass(frozen=True)
class Attached:
    """An XDP program on a device: which, and in which mode."""

    ifindex: int
    ifname: str
    prog_id: int
    mode: str  # native | generic

    def __str__(self) -> str:
        return f"{self.ifname} xdp {self.mode} (program {self.prog_id})"


def _info(fd: int) -> _prog_info:
    info = _prog_info()
    size = ctypes.c_uint32(ctypes.sizeof(info))
    check(libbpf().bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size)), "bpf_obj_get_info_by_fd")
    return info


def prog_name(prog_id: int) -> str:
    """The name of loaded program ``prog_id`` ("" when it is gone)."""
    fd = libbpf().bpf_prog_get_fd_by_id(prog_id)
    if fd < 0:
        return ""
    try:
        return _info(fd).name.decode(errors="replace")
    finally:
        os.close(fd)


def pinned_id(prog_dir: str) -> int | None:
    """Id of the prefilter program pinned under ``prog_dir``, if any."""
    fd = libbpf().bpf_obj_get(os.path.join(prog_dir, XDP_PROGRAM).encode())
    if fd < 0:
        return None
    try:
        return _info(fd).id
    finally:
        os.close(fd)


def query(ifindex: int, ifname: str = "") -> list[Attached]:
    """The programs attached to ``ifindex`` (native and generic)."""
    opts = bpf_xdp_query_opts(sz=ctypes.sizeof(bpf_xdp_query_opts))
    check(libbpf().bpf_xdp_query(ifindex, 0, ctypes.byref(opts)), f"XDP query of {ifname or ifindex}")
    name = ifname or socket.if_indextoname(ifindex)
    return [Attached(ifindex, name, pid, mode) for mode, pid in (("native", opts.drv_prog_id),
                                                                ("generic", opts.skb_prog_id)) if pid]


def is_ours(prog_id: int, ours: set[int], by_name: bool = False) -> bool:
    """One of our pinned programs (``ours``), or with ``by_name`` any prefilter:
    only the device being attached to may have one replaced whose pin is gone
    (an earlier run's); elsewhere a prefilter pinned under another bpf root is
    another agent's and stays."""
    return prog_id in ours or (by_name and prog_name(prog_id) == XDP_PROGRAM)


def find_ours(ours: set[int]) -> list[Attached]:
    """Every device of this namespace running one of the programs ``ours``."""
    found = []
    for ifindex, ifname in socket.if_nameindex():
        try:
            found += [a for a in query(ifindex, ifname) if is_ours(a.prog_id, ours)]
        except BPFError as exc:
            if exc.errno != errno.ENODEV:  # a link that went away meanwhile
                raise
    return found


def detach(a: Attached) -> None:
    ret = libbpf().bpf_xdp_detach(a.ifindex, MODES[a.mode], None)
    err = (-ret if ret != -1 else ctypes.get_errno()) if ret < 0 else 0
    if err and err != errno.ENODEV:  # a device that went away took the program with it
        raise XDPError(err, f"detach XDP from {a.ifname}: {os.strerror(err)}")


def _load(obj_path: str, pin_root: str, prog_dir: str) -> tuple[int, int]:
    """(bpf_object pointer, program fd); the program is pinned."""
    lib = libbpf()
    logbuf = ctypes.create_string_buffer(1 << 20)
    opts = bpf_object_open_opts(sz=ctypes.sizeof(bpf_object_open_opts), pin_root_path=pin_root.encode(),
                                kernel_log_buf=ctypes.cast(logbuf, ctypes.c_char_p),
                                kernel_log_size=ctypes.sizeof(logbuf))
    obj = lib.bpf_object__open_file(obj_path.encode(), ctypes.byref(opts))
    if not obj:
        check(-ctypes.get_errno() or -errno.EINVAL, f"bpf_object__open_file({obj_path})")
    try:
        ret = lib.bpf_object__load(obj)
        if ret < 0:
            raise XDPError(-ret, f"loading the XDP prefilter: {os.strerror(-ret)}\n"
                                 f"{logbuf.value.decode(errors='replace')[-4000:]}")
        prog = lib.bpf_object__find_program_by_name(obj, XDP_PROGRAM.encode())
        if not prog:
            raise XDPError(errno.ENOENT, f"program {XDP_PROGRAM} not in {obj_path}")
        fd = check(lib.bpf_program__fd(prog), f"fd of {XDP_PROGRAM}")
        os.makedirs(prog_dir, exist_ok=True)
        pin = os.path.join(prog_dir, XDP_PROGRAM)
        tmp = pin + "_new"  # bpffs forbids "." in names
        if os.path.lexists(tmp):
            os.unlink(tmp)
        check(lib.bpf_obj_pin(fd, tmp.encode()), f"pin {tmp}")
        os.replace(tmp, pin)
    except BaseException:
        lib.bpf_object__close(obj)
        raise
    return obj, fd


def install(obj_path: str, pin_root: str, prog_dir: str, device: str, mode: str) -> Attached:
    """Load the prefilter and attach it to ``device`` in ``mode`` (see module doc)."""
    if mode not in MODES:
        raise ValueError(f"prefilter mode must be one of {', '.join(MODES)}, got {mode!r}")
    try:
        ifindex = socket.if_nametoindex(device)
    except OSError:
        raise XDPError(errno.ENODEV, f"prefilter device {device!r} does not exist") from None
    ours = {i for i in (pinned_id(prog_dir),) if i}
    for a in query(ifindex, device):
        if not is_ours(a.prog_id, ours, by_name=True):
            raise XDPError(errno.EEXIST, f"{device} already runs XDP program {a.prog_id} "
                                         f"({prog_name(a.prog_id) or '?'}) in {a.mode} mode, which is not the "
                                         f"prefilter: detach it first (ip link set dev {device} xdp off)")
    obj, fd = _load(obj_path, pin_root, prog_dir)
    try:
        for a in find_ours(ours):
            if a.ifindex != ifindex or a.mode != mode:
                detach(a)
                log.info("prefilter.detached", where=str(a))
        ret = libbpf().bpf_xdp_attach(ifindex, fd, MODES[mode], None)
        if ret < 0:
            err = -ret if ret != -1 else ctypes.get_errno()
            hint = (": the device's driver has no native XDP, use --prefilter-mode generic"
                    if err == errno.EOPNOTSUPP and mode == "native" else "")
            raise XDPError(err, f"attaching the XDP prefilter to {device} ({mode}): {os.strerror(err)}{hint}")
        attached = Attached(ifindex, device, _info(fd).id, mode)
    finally:
        libbpf().bpf_object__close(obj)  # the pin and the attachment keep the program
    log.info("prefilter.attached", where=str(attached))
    return attached


def remove(prog_dir: str) -> list[Attached]:
    """Take every prefilter of ours off its device and unpin the program."""
    found = find_ours({i for i in (pinned_id(prog_dir),) if i})
    for a in found:
        detach(a)
    pin = os.path.join(prog_dir, XDP_PROGRAM)
    if os.path.lexists(pin):
        os.unlink(pin)
    return found
