"""Compile (once), load (once) and attach (per endpoint) the datapath.

* :func:`compile_datapath` builds ``bpf_src/bpf_lxc.c`` (or another program
  of ``bpf_src``, e.g. ``bpf_sock.c`` for :mod:`.socketlb`) with clang into
  ``<out_dir>/<sha256>.o``; the hash covers the program's name, every source
  file, the defines and the clang version, so an existing object is reused and
  clang never runs on the endpoint path.
* :class:`Datapath` loads the object through libbpf (ctypes). Maps are pinned
  by name under ``pin_root`` (default ``/sys/fs/bpf/tc/globals``): pinned maps
  that already exist are REUSED (a restarted agent keeps all endpoint, policy,
  CT and ipcache state). A pinned map whose type/sizes no longer match the
  object is unlinked and recreated (logged). The programs are pinned too,
  under ``prog_dir`` (default ``/sys/fs/bpf/cilium/progs``: ``from_container``,
  ``to_container``, ``from_host``, ``to_overlay`` and ``from_overlay``),
  replacing older pins.
* Attached tc filters hold their own program reference, so enforcement goes on
  while the agent is down. A restarted agent either loads the (cached) object
  again and re-attaches every endpoint with :meth:`Datapath.attach`
  (idempotent: same prio/handle, ``replace``), or, without loading anything,
  uses :meth:`Datapath.from_pinned` to get the pinned programs and maps.
* Attaching: ``from-container`` on tc ingress and ``to-container`` on tc
  egress of the host-side veth (``from-host`` once on cilium_host's tc ingress
  and ``to-overlay`` on its egress, :meth:`Datapath.attach_host`;
  ``from-overlay`` on cilium_vxlan's ingress, :meth:`Datapath.attach_overlay`),
  through pyroute2. pyroute2 0.9's sync
  ``IPRoute`` cannot run inside a running event loop, so every netlink call
  runs in ONE dedicated worker thread that owns one ``IPRoute`` socket;
  :meth:`attach`/:meth:`detach` block the caller (safe from any thread, even a
  coroutine's), :meth:`attach_async`/:meth:`detach_async` await the worker.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import functools
import hashlib
import os
import shutil
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Mapping

import structlog

from docker_cilium import defaults
from docker_cilium.datapath.bpf import (
    BPFError,
    bpf_object_open_opts,
    check,
    ensure_bpffs,
    libbpf,
    map_info,
)
from docker_cilium.datapath.maps.registry import DatapathMaps
from docker_cilium.datapath.nlbatch import Batcher, BpfFilter

log = structlog.get_logger(__name__)

SRC_DIR = Path(__file__).resolve().parents[2] / "bpf_src"
PROGRAMS = {"from_container": "ingress", "to_container": "egress"}
#: on cilium_host (once, :meth:`Datapath.attach_host`): assigns the proxy's
#: socket to connections to-container hairpins there (lib/proxy.h)
HOST_PROGRAMS = {"from_host": "ingress", "to_overlay": "egress"}
#: on cilium_vxlan in tunnel mode (:meth:`Datapath.attach_overlay`): packets
#: from other nodes, with their sender's identity in the tunnel key
OVERLAY_PROGRAMS = {"from_overlay": "ingress"}
ALL_PROGRAMS = {**PROGRAMS, **HOST_PROGRAMS, **OVERLAY_PROGRAMS}
TC_PARENT = {"ingress": "ffff:fff2", "egress": "ffff:fff3"}
TC_PRIO = 1
TC_HANDLE = 1
ETH_P_ALL = 0x0003
BPF_PROG_TYPE_SCHED_CLS = 3


# --------------------------------------------------------------------------
# compile
# --------------------------------------------------------------------------
def clang_binary() -> str:
    for c in ("clang", "clang-14", "clang-15", "clang-16"):
        p = shutil.which(c)
        if p:
            return p
    raise FileNotFoundError("clang not found (apt-get install clang)")


@functools.lru_cache(maxsize=None)
def _clang_version(clang: str) -> str:
    return subprocess.run([clang, "--version"], capture_output=True, text=True,
                          check=True).stdout


def _include_dirs() -> list[str]:
    dirs = []
    for d in ("/usr/include/x86_64-linux-gnu", "/usr/include/aarch64-linux-gnu"):
        if os.path.isdir(os.path.join(d, "asm")):
            dirs.append(d)
            break
    return dirs


def datapath_hash(src_dir: Path, defines: Mapping[str, Any], clang: str | None, source: str = "bpf_lxc.c") -> str:
    """sha256 of the top source's name, the sources, the defines and ``clang
    --version``; ``clang=None`` leaves the compiler out: the name of an object
    shipped prebuilt (an image without clang cannot ask which clang built it)."""
    h = hashlib.sha256(source.encode() + b"\0")
    for p in sorted(Path(src_dir).rglob("*")):
        if p.is_file() and p.suffix in (".c", ".h"):
            h.update(str(p.relative_to(src_dir)).encode() + b"\0")
            h.update(p.read_bytes() + b"\0")
    for k in sorted(defines):
        h.update(f"-D{k}={defines[k]}\0".encode())
    if clang is not None:
        h.update(_clang_version(clang).encode())
    return h.hexdigest()


def prebuilt_object(src_dir: str | os.PathLike = SRC_DIR, defines: Mapping[str, Any] | None = None,
                    source: str = "bpf_lxc.c", prebuilt_dir: str | os.PathLike | None = None) -> Path:
    """The object ``python -m docker_cilium.datapath.prebuild`` compiled for these
    sources and defines (the agent image: built in its build stage, no clang at
    run time); FileNotFoundError naming both ways out when there is none."""
    digest = datapath_hash(Path(src_dir), dict(defines or {}), None, source)
    obj = Path(prebuilt_dir or defaults.BPF_PREBUILT_DIR) / f"{digest}.o"
    if not obj.exists():
        raise FileNotFoundError(f"clang not found and no prebuilt datapath object {obj} for {source} and these sources: "
                                f"install clang (apt-get install clang) or rebuild the image")
    return obj


def compile_datapath(src_dir: str | os.PathLike = SRC_DIR,
                     out_dir: str | os.PathLike | None = None,
                     defines: Mapping[str, Any] | None = None, source: str = "bpf_lxc.c") -> Path:
    """Compile ``source`` (an object's top file in ``src_dir``: bpf_lxc.c, or
    bpf_xdp.c for the prefilter, bpf_sock.c for the socket LB) into
    ``out_dir/<sha256>.o`` unless that file exists (``out_dir`` defaults to the
    agent's: ``<state dir>/bpf``). Without clang (the agent image), the
    prebuilt object (:func:`prebuilt_object`).

    ``defines``: ``{"NAME": value}`` -> ``-DNAME=value`` (``None`` -> ``-DNAME``),
    e.g. ``{"POLICY_MAP_SIZE": 16384, "DISABLE_IPV6": None}``.
    """
    defines = dict(defines or {})
    src_dir = Path(src_dir)
    out_dir = Path(out_dir if out_dir is not None else defaults.bpf_object_dir())
    try:
        clang = clang_binary()
    except FileNotFoundError:
        return prebuilt_object(src_dir, defines, source)
    digest = datapath_hash(src_dir, defines, clang, source)
    obj = out_dir / f"{digest}.o"
    if obj.exists():
        return obj
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".{digest}.{os.getpid()}.{threading.get_ident()}.tmp"
    cmd = [clang, "-O2", "-g", "-target", "bpf", "-Wall", "-Wno-unused-function",
           "-I", str(src_dir)]
    for d in _include_dirs():
        cmd += ["-idirafter", d]
    for k, v in sorted(defines.items()):
        cmd.append(f"-D{k}" if v is None else f"-D{k}={v}")
    cmd += ["-c", str(src_dir / source), "-o", str(tmp)]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"clang failed ({res.returncode}):\n{res.stderr}")
    os.replace(tmp, obj)  # atomic: concurrent compilers never see a partial file
    log.info("datapath compiled", source=source, object=str(obj),
             ms=round((time.perf_counter() - t0) * 1000, 1))
    return obj


# --------------------------------------------------------------------------
# load
# --------------------------------------------------------------------------
def _prog_dir_for(pin_root: str) -> str:
    """The program pin dir beside a map pin root: /X/tc/globals -> /X/cilium/progs
    (so test pin roots stay self-contained)."""
    return defaults.bpf_prog_dir(defaults.bpf_root_of(pin_root))


class Datapath:
    """The loaded datapath: program fds, pinned maps, tc attach/detach."""

    def __init__(self, pin_root: str = defaults.BPF_PIN_ROOT, prog_dir: str | None = None):
        self.pin_root = pin_root
        self.prog_dir = prog_dir or _prog_dir_for(pin_root)
        self._obj = None
        self.prog_fds: dict[str, int] = {}
        self._own_prog_fds = False
        self.maps: DatapathMaps | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._ipr = None
        self._tc = Batcher()
        self.timings: dict[str, float] = {}

    # ---- loading ---------------------------------------------------------
    @classmethod
    def load(cls, obj_path: str | os.PathLike, pin_root: str = defaults.BPF_PIN_ROOT,
             prog_dir: str | None = None) -> "Datapath":
        dp = cls(pin_root, prog_dir)
        dp._load(str(obj_path))
        return dp

    def _load(self, obj_path: str) -> None:
        t0 = time.perf_counter()
        if os.path.normpath(self.pin_root).startswith(defaults.BPFFS_ROOT):
            ensure_bpffs(defaults.BPFFS_ROOT)
        os.makedirs(self.pin_root, exist_ok=True)
        os.makedirs(self.prog_dir, exist_ok=True)
        lib = libbpf()
        logbuf = ctypes.create_string_buffer(1 << 20)
        opts = bpf_object_open_opts()
        opts.sz = ctypes.sizeof(bpf_object_open_opts)
        opts.pin_root_path = self.pin_root.encode()
        opts.kernel_log_buf = ctypes.cast(logbuf, ctypes.c_char_p)
        opts.kernel_log_size = ctypes.sizeof(logbuf)
        opts.kernel_log_level = 0
        obj = lib.bpf_object__open_file(obj_path.encode(), ctypes.byref(opts))
        if not obj:
            check(-ctypes.get_errno() or -errno.EINVAL, f"bpf_object__open_file({obj_path})")
        try:
            # "tc/<name>" sections are not in libbpf's exact-match table:
            # set the program type explicitly.
            prog = None
            while True:
                prog = lib.bpf_object__next_program(obj, prog)
                if not prog:
                    break
                lib.bpf_program__set_type(prog, BPF_PROG_TYPE_SCHED_CLS)
            self.drop_incompatible_pins(obj, self.pin_root)
            ret = lib.bpf_object__load(obj)
            if ret < 0:
                vlog = logbuf.value.decode(errors="replace")
                err = -ret
                raise BPFError(err, f"bpf_object__load: {os.strerror(err)}\n"
                               f"{vlog[-8000:]}")
            for name in ALL_PROGRAMS:
                prog = lib.bpf_object__find_program_by_name(obj, name.encode())
                if not prog:
                    raise BPFError(errno.ENOENT, f"program {name} not in {obj_path}")
                self.prog_fds[name] = check(lib.bpf_program__fd(prog), f"fd of {name}")
                pin = os.path.join(self.prog_dir, name)
                tmp = pin + "_new"  # bpffs forbids "." in names
                if os.path.exists(tmp):
                    os.unlink(tmp)
                check(lib.bpf_obj_pin(self.prog_fds[name], tmp.encode()), f"pin {tmp}")
                os.replace(tmp, pin)  # atomic re-pin (rename works on bpffs)
        except Exception:
            lib.bpf_object__close(obj)
            self.prog_fds.clear()
            raise
        self._obj = obj
        self.timings["load_ms"] = (time.perf_counter() - t0) * 1000
        self.maps = DatapathMaps.open(self.pin_root)
        self.warm_up()

    def warm_up(self) -> None:
        """Import pyroute2 and open the netlink socket in the worker thread now
        (~150 ms, once) instead of on the first endpoint's attach. Non-blocking."""
        self._worker().submit(self._ip)

    @staticmethod
    def drop_incompatible_pins(obj, pin_root: str) -> None:
        """Unlink the pins under ``pin_root`` of ``obj``'s maps whose type or
        sizes differ from the object's, so that loading it creates them anew
        (also used for the socket LB's object, :mod:`.socketlb`)."""
        lib = libbpf()
        m = None
        while True:
            m = lib.bpf_object__next_map(obj, m)
            if not m:
                break
            name = lib.bpf_map__name(m).decode()
            path = os.path.join(pin_root, name)
            if not os.path.exists(path):
                continue
            fd = lib.bpf_obj_get(path.encode())
            if fd < 0:
                continue
            try:
                info = map_info(fd)
            finally:
                os.close(fd)
            want = (lib.bpf_map__type(m), lib.bpf_map__key_size(m), lib.bpf_map__value_size(m),
                    lib.bpf_map__map_flags(m))
            have = (info.type, info.key_size, info.value_size, info.map_flags)
            max_ok = (lib.bpf_map__max_entries(m) in (0, info.max_entries))
            if want != have or not max_ok:
                log.warning("pinned map incompatible with datapath, recreating",
                            map=name, have=have, want=want)
                os.unlink(path)

    @classmethod
    def from_pinned(cls, pin_root: str = defaults.BPF_PIN_ROOT,
                    prog_dir: str | None = None) -> "Datapath":
        """Attach-capable Datapath from pinned programs and maps (no load)."""
        dp = cls(pin_root, prog_dir)
        for name in ALL_PROGRAMS:
            path = os.path.join(dp.prog_dir, name)
            dp.prog_fds[name] = check(libbpf().bpf_obj_get(path.encode()),
                                      f"bpf_obj_get({path})")
        dp._own_prog_fds = True
        dp.maps = DatapathMaps.open(pin_root)
        dp.warm_up()
        return dp

    def close(self) -> None:
        """Release fds (programs stay pinned and attached; maps stay pinned)."""
        if self._executor is not None:
            ex, self._executor = self._executor, None
            ex.submit(self._close_ipr).result()
            ex.shutdown(wait=True)
        if self.maps is not None:
            self.maps.close()
            self.maps = None
        if self._own_prog_fds:
            for fd in self.prog_fds.values():
                os.close(fd)
        self.prog_fds = {}
        if self._obj is not None:
            libbpf().bpf_object__close(self._obj)
            self._obj = None

    def __enter__(self) -> "Datapath":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- tc attach (all netlink in one worker thread) --------------------
    def _close_ipr(self) -> None:
        self._tc.close()
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None

    def _ip(self):
        if self._ipr is None:
            from pyroute2 import IPRoute

            self._ipr = IPRoute()
        return self._ipr

    def _worker(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="datapath-tc")
        return self._executor

    def _run(self, fn: Callable, *args):
        return self._worker().submit(fn, *args).result()

    async def _arun(self, fn: Callable, *args):
        return await asyncio.get_running_loop().run_in_executor(self._worker(), fn, *args)

    def _do_attach(self, ifindex: int, programs: Mapping[str, str] = PROGRAMS) -> float:
        """clsact and both filters in one netlink batch (``nlbatch``): on every
        endpoint's critical path."""
        t0 = time.perf_counter()
        self._tc.attach(ifindex, [
            BpfFilter(parent=int(TC_PARENT[direction].replace(":", ""), 16), fd=self.prog_fds[name],
                      name=f"bpf_lxc.o:[{name}]", prio=TC_PRIO, handle=TC_HANDLE, protocol=ETH_P_ALL)
            for name, direction in programs.items()])
        return (time.perf_counter() - t0) * 1000

    def _do_detach(self, ifindex: int, programs: Mapping[str, str] = PROGRAMS) -> None:
        from pyroute2.netlink.exceptions import NetlinkError

        ipr = self._ip()
        for direction in programs.values():
            try:
                ipr.tc("del-filter", "bpf", ifindex, TC_HANDLE, parent=TC_PARENT[direction],
                       prio=TC_PRIO, protocol=ETH_P_ALL)
            except NetlinkError as e:
                if e.code not in (errno.ENOENT, errno.ENODEV, errno.EINVAL):
                    raise

    def attach(self, ifindex: int) -> float:
        """Attach both programs to the host veth ``ifindex`` (idempotent).
        Returns the time taken in ms."""
        return self._run(self._do_attach, ifindex)

    def detach(self, ifindex: int) -> None:
        self._run(self._do_detach, ifindex)

    def attach_host(self, ifindex: int) -> None:
        """Attach ``from-host`` to cilium_host's tc ingress (idempotent) and
        tell to-container its ifindex (the ingress proxy's hairpin)."""
        self._run(self._do_attach, ifindex, HOST_PROGRAMS)
        assert self.maps is not None
        self.maps.config.set_host_ifindex(ifindex)

    def detach_host(self, ifindex: int) -> None:
        assert self.maps is not None
        self.maps.config.set_host_ifindex(0)
        self._run(self._do_detach, ifindex, HOST_PROGRAMS)

    def attach_overlay(self, ifindex: int, port: int = defaults.VXLAN_PORT,
                       node_ipv4: str | None = None) -> None:
        """Attach ``from-overlay`` to cilium_vxlan's tc ingress (idempotent) and
        tell the programs to encapsulate through it (``tunnel_ifindex``), from
        ``node_ipv4`` (the address the other nodes know), and to keep
        containers off its UDP ``port``."""
        self._run(self._do_attach, ifindex, OVERLAY_PROGRAMS)
        assert self.maps is not None
        self.maps.config.set_tunnel_ifindex(ifindex, port, node_ipv4)

    async def attach_async(self, ifindex: int) -> float:
        return await self._arun(self._do_attach, ifindex)

    async def detach_async(self, ifindex: int) -> None:
        await self._arun(self._do_detach, ifindex)

    def attached(self, ifindex: int) -> dict[str, bool]:
        """Which directions currently have a bpf filter at our prio."""
        def _q() -> dict[str, bool]:
            out = {}
            for direction in PROGRAMS.values():
                msgs = self._ip().get_filters(index=ifindex, parent=TC_PARENT[direction])
                out[direction] = any(m.get_attr("TCA_KIND") == "bpf" for m in msgs)
            return out
        return self._run(_q)


def unpin_all(pin_root: str, prog_dir: str | None = None) -> None:
    """Remove every pinned map/program of a datapath (the tests' cleanup)."""
    prog_dir = prog_dir or _prog_dir_for(pin_root)
    for d in (pin_root, prog_dir):
        if os.path.isdir(d):
            for n in os.listdir(d):
                os.unlink(os.path.join(d, n))


__all__ = ["compile_datapath", "prebuilt_object", "Datapath", "unpin_all", "SRC_DIR"]
