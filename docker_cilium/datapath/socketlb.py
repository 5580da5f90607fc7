"""The socket load balancer (Cilium's ``pkg/socketlb``): host processes reach
service VIPs.

``bpf_src/bpf_sock.c`` is compiled once (:func:`~.loader.compile_datapath`
with ``source="bpf_sock.c"``, cached by hash like the endpoint datapath) and
loaded once per agent start. Its maps are pinned by name beside the
datapath's, so the hooks read the same service maps the tc datapath and
:class:`~.maps.lbmap.LBMap` use. Every program is attached to the root of the
cgroup v2 hierarchy through a BPF link pinned under
``<bpf root>/cilium/socketlb/links/cgroup/<program>``: the pin, not the
agent, keeps the hook attached, so host processes keep reaching VIPs while
the agent is down. A restarted agent swaps its new programs into the pinned
links (``bpf_link_update``: no moment without a hook); ``--bpf-lb-sock=false``
and ``cilium cleanup`` unpin the links, which detaches them.

The hooks translate only sockets of the network namespace whose cookie is in
``cilium_lb_sock_hostns``: the agent writes its own (the host's) before
attaching. Docker runs on cgroup v1 here; a cgroup v2 hierarchy mounts beside
it and holds every process in its root, so one attachment covers them all.
"""

from __future__ import annotations

import ctypes
import errno
import os
from dataclasses import dataclass, field

import structlog

from docker_cilium import defaults
from docker_cilium.datapath.bpf import (BPFError, bpf_object_open_opts, check, ensure_bpffs, ensure_mounted,
                                        is_mounted, libbpf)
from docker_cilium.datapath.loader import Datapath
from docker_cilium.datapath.maps.socklb import SockLBMaps, netns_cookie

log = structlog.get_logger(__name__)

SOURCE = "bpf_sock.c"
# Cilium's program names; each one's attach type comes from its ELF section.
PROGRAMS = ("cil_sock4_connect", "cil_sock4_sendmsg", "cil_sock4_recvmsg", "cil_sock4_getpeername",
            "cil_sock6_connect", "cil_sock6_sendmsg", "cil_sock6_recvmsg", "cil_sock6_getpeername")
CGROUP2_FS = "cgroup2"
BPF_LINK_TYPE_CGROUP = 3  # <linux/bpf.h>


class _bpf_link_info(ctypes.Structure):
    """The leading fields of ``struct bpf_link_info`` with its cgroup member."""
    _fields_ = [("type", ctypes.c_uint32), ("id", ctypes.c_uint32), ("prog_id", ctypes.c_uint32),
                ("_pad", ctypes.c_uint32), ("cgroup_id", ctypes.c_uint64), ("attach_type", ctypes.c_uint32),
                ("_rest", ctypes.c_uint8 * 44)]


@dataclass(frozen=True)
class LinkInfo:
    id: int
    prog_id: int
    cgroup_id: int
    attach_type: int


def link_info(fd: int) -> LinkInfo:
    info = _bpf_link_info()
    size = ctypes.c_uint32(ctypes.sizeof(info))
    check(libbpf().bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size)), "link info")
    if info.type != BPF_LINK_TYPE_CGROUP:
        raise BPFError(errno.EINVAL, f"link {info.id} is not a cgroup link (type {info.type})")
    return LinkInfo(info.id, info.prog_id, info.cgroup_id, info.attach_type)


def is_cgroup2(path: str) -> bool:
    return is_mounted(path, CGROUP2_FS)


def ensure_cgroup2(path: str) -> None:
    """Mount the cgroup v2 hierarchy at ``path`` unless it is mounted there (as
    Cilium mounts ``/run/cilium/cgroupv2``; works beside Docker's cgroup v1)."""
    if not is_cgroup2(path):
        ensure_mounted(path, CGROUP2_FS, "none")
        log.info("socketlb.cgroup2_mounted", path=path)


@dataclass
class SocketLB:
    """The loaded bpf_sock object: its programs (fd, attach type) and its maps."""
    obj: int | None
    programs: dict[str, tuple[int, int]] = field(default_factory=dict)
    maps: SockLBMaps | None = None

    @classmethod
    def load(cls, obj_path: str | os.PathLike, pin_root: str) -> "SocketLB":
        """Load the object with its maps pinned (or reused) under ``pin_root``,
        the endpoint datapath's pin root."""
        if os.path.normpath(pin_root).startswith(defaults.BPFFS_ROOT):
            ensure_bpffs()
        os.makedirs(pin_root, exist_ok=True)
        lib = libbpf()
        logbuf = ctypes.create_string_buffer(1 << 20)
        opts = bpf_object_open_opts()
        opts.sz = ctypes.sizeof(bpf_object_open_opts)
        opts.pin_root_path = pin_root.encode()
        opts.kernel_log_buf = ctypes.cast(logbuf, ctypes.c_char_p)
        opts.kernel_log_size = ctypes.sizeof(logbuf)
        obj = lib.bpf_object__open_file(os.fspath(obj_path).encode(), ctypes.byref(opts))
        if not obj:
            check(-ctypes.get_errno() or -errno.EINVAL, f"bpf_object__open_file({obj_path})")
        lb = cls(obj)
        try:
            Datapath.drop_incompatible_pins(obj, pin_root)
            ret = lib.bpf_object__load(obj)
            if ret < 0:
                raise BPFError(-ret, f"bpf_object__load({obj_path}): {os.strerror(-ret)}\n"
                               f"{logbuf.value.decode(errors='replace')[-8000:]}")
            for name in PROGRAMS:
                prog = lib.bpf_object__find_program_by_name(obj, name.encode())
                if not prog:
                    raise BPFError(errno.ENOENT, f"program {name} not in {obj_path}")
                lb.programs[name] = (check(lib.bpf_program__fd(prog), f"fd of {name}"),
                                     lib.bpf_program__expected_attach_type(prog))
            lb.maps = SockLBMaps.open(pin_root)
        except Exception:
            lb.close()
            raise
        return lb

    def close(self) -> None:
        """Release the object and map fds; pinned links keep the programs attached."""
        if self.maps is not None:
            self.maps.close()
            self.maps = None
        if self.obj is not None:
            libbpf().bpf_object__close(self.obj)
            self.obj = None
        self.programs = {}

    def attach(self, cgroup: str, links_dir: str, hostns_cookie: int | None = None) -> None:
        """Translate the sockets of the netns ``hostns_cookie`` (default: the
        caller's) in ``cgroup`` and below, through links pinned in ``links_dir``.

        A pinned link of the same cgroup and attach type gets the new program
        in place; any other pin there is replaced (or removed, for a program
        this object no longer has)."""
        assert self.maps is not None
        self.maps.set_hostns(netns_cookie() if hostns_cookie is None else hostns_cookie)
        os.makedirs(links_dir, exist_ok=True)
        cgroup_id = os.stat(cgroup).st_ino
        cg_fd = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for name, (prog_fd, attach_type) in self.programs.items():
                pin = os.path.join(links_dir, name)
                if self._update_pinned(pin, prog_fd, cgroup_id, attach_type):
                    continue
                link_fd = check(libbpf().bpf_link_create(prog_fd, cg_fd, attach_type, None),
                                f"bpf_link_create({name}, {cgroup})")
                try:
                    tmp = pin + "_new"  # bpffs forbids "." in names
                    if os.path.exists(tmp):
                        os.unlink(tmp)
                    check(libbpf().bpf_obj_pin(link_fd, tmp.encode()), f"pin {tmp}")
                    os.replace(tmp, pin)  # an older link here is unpinned (detached) only now
                finally:
                    os.close(link_fd)
        finally:
            os.close(cg_fd)
        for stale in set(os.listdir(links_dir)) - set(self.programs):
            os.unlink(os.path.join(links_dir, stale))
        log.info("socketlb.attached", cgroup=cgroup, programs=len(self.programs), links=links_dir)

    @staticmethod
    def _update_pinned(pin: str, prog_fd: int, cgroup_id: int, attach_type: int) -> bool:
        """Swap prog_fd into the link pinned at ``pin`` if it is a link of this
        cgroup and attach type; False if there is none such (or it is defunct)."""
        fd = libbpf().bpf_obj_get(pin.encode())
        if fd < 0:
            return False
        try:
            info = link_info(fd)
            if (info.cgroup_id, info.attach_type) != (cgroup_id, attach_type):
                return False
            return libbpf().bpf_link_update(fd, prog_fd, None) == 0
        except BPFError:
            return False  # not a cgroup link: replaced by the caller
        finally:
            os.close(fd)


def detach(links_dir: str) -> list[str]:
    """Unpin every link in ``links_dir`` (each detaches unless a process still
    holds it) and remove the directory if it is then empty; the removed pins."""
    try:
        names = sorted(os.listdir(links_dir))
    except FileNotFoundError:
        return []
    removed = []
    for name in names:
        path = os.path.join(links_dir, name)
        os.unlink(path)
        removed.append(path)
    try:
        os.rmdir(links_dir)
    except OSError:
        pass
    return removed


def enable(obj_path: str | os.PathLike, pin_root: str, links_dir: str, cgroup_root: str) -> None:
    """The agent's start: mount cgroup v2 if needed, load, attach to its root
    for the agent's (host) netns, then drop the fds (the pinned links stay)."""
    try:
        ensure_cgroup2(cgroup_root)
        lb = SocketLB.load(obj_path, pin_root)
        try:
            lb.attach(cgroup_root, links_dir)
        finally:
            lb.close()
    except OSError as exc:
        raise BPFError(exc.errno or errno.EINVAL, f"socket LB (--bpf-lb-sock) on cgroup {cgroup_root}: {exc}; "
                       "start with --bpf-lb-sock=false to run without it") from exc


__all__ = ["SOURCE", "PROGRAMS", "SocketLB", "detach", "enable", "ensure_cgroup2", "is_cgroup2", "link_info"]
