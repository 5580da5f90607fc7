"""What the agent leaves on the host, found and removed (``cilium cleanup``).

The agent keeps its datapath running when it stops (programs attached, maps
pinned, chains in place: containers keep their connectivity and policy).
``cilium cleanup`` takes all of that away, and only what is ours:

* tc filters running the agent's programs: named as the loader names them
  (``bpf_lxc.o:[...]``) and either on one of our links or running a program
  pinned under our program dir (another datapath on the host, e.g. a test's
  or a second agent's with its own bpf root, is left alone);
* the XDP prefilter on whatever device runs the program pinned under our
  program dir (:mod:`docker_cilium.datapath.xdp`);
* the maps the datapath pins (:data:`registry.MAP_TYPES` and
  :data:`registry.DATAPATH_ONLY_MAPS`) under the pin root, and its three
  programs under the program dir; then those directories if left empty;
* the socket LB's maps (:data:`socklb.MAP_TYPES`) and its pinned cgroup
  links (unpinning a link detaches its hook from the cgroup);
* the links the agent creates (``cilium_host``/``cilium_net``, ``cilium_vxlan``, ``lxc`` + 12
  hex endpoint veths, ``tmp`` + 12 hex container sides never moved into a
  container) and the routes leaving by them;
* the L7 proxy's policy routing (:mod:`docker_cilium.datapath.proxyroute`:
  the fwmark rule and table 2004's local routes);
* the ``CILIUM_*`` iptables/ip6tables chains and the jumps into them.

Order follows Cilium's: filters and XDP first (a filter whose maps were unpinned still runs),
then maps, routes and links, then iptables.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import os
import re
import shutil
import socket
import subprocess
from dataclasses import dataclass, field

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from docker_cilium import defaults
from docker_cilium.datapath import proxyroute, xdp
from docker_cilium.datapath.bpf import check, libbpf
from docker_cilium.datapath.iptables import CHAINS, Iptables
from docker_cilium.datapath.link import PEER_IFNAME_PREFIX, is_endpoint_ifname
from docker_cilium.datapath.loader import ALL_PROGRAMS, TC_PARENT
from docker_cilium.datapath.maps.registry import DATAPATH_ONLY_MAPS, MAP_TYPES
from docker_cilium.datapath.maps.socklb import MAP_TYPES as SOCKLB_MAP_TYPES
from docker_cilium.datapath.socketlb import PROGRAMS as SOCKLB_PROGRAMS

FILTER_NAME = "bpf_lxc"  # the loader names its filters "bpf_lxc.o:[<program>]"
OUR_MAPS = frozenset(MAP_TYPES) | frozenset(DATAPATH_ONLY_MAPS)
SOCKLB_PINS = frozenset(SOCKLB_MAP_TYPES)  # pinned beside OUR_MAPS when --bpf-lb-sock is on
_PEER_RE = re.compile(re.escape(PEER_IFNAME_PREFIX) + r"[0-9a-f]{12}")
_PARENTS = {int(p.replace(":", ""), 16): direction for direction, p in TC_PARENT.items()}
TCA_BPF_ID = 11  # <linux/pkt_cls.h>: the attached program's id


class _prog_info(ctypes.Structure):
    """The leading fields of ``struct bpf_prog_info`` (the kernel fills what fits)."""
    _fields_ = [("type", ctypes.c_uint32), ("id", ctypes.c_uint32)]


def pinned_prog_ids(prog_dir: str) -> set[int]:
    """Ids of the programs pinned under ``prog_dir`` (the ones our filters run)."""
    ids = set()
    for name in ALL_PROGRAMS:
        path = os.path.join(prog_dir, name)
        fd = libbpf().bpf_obj_get(path.encode())
        if fd < 0:
            continue  # not pinned (or not a program)
        try:
            info = _prog_info()
            size = ctypes.c_uint32(ctypes.sizeof(info))
            check(libbpf().bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size)), f"info of {path}")
            ids.add(info.id)
        finally:
            os.close(fd)
    return ids


def _filter_prog_id(opts) -> int | None:
    """TCA_BPF_ID of a bpf filter; pyroute2 0.9 does not decode it, so the u32
    is read from the raw attribute it keeps."""
    for name, nla in opts["attrs"]:
        if name == "UNKNOWN" and hasattr(nla, "data") and nla["header"]["type"] == TCA_BPF_ID:
            return int.from_bytes(nla.data[nla.offset + 4:nla.offset + 8], "little")
    return None


def is_our_link(name: str) -> bool:
    return (name in (defaults.HOST_DEVICE, defaults.HOST_PEER_DEVICE, defaults.VXLAN_DEVICE)
            or is_endpoint_ifname(name)
            or _PEER_RE.fullmatch(name) is not None)


@dataclass(frozen=True)
class TcFilter:
    ifname: str
    ifindex: int
    parent: int
    prio: int
    protocol: int
    handle: int
    name: str

    def __str__(self) -> str:
        return f"{self.ifname} {_PARENTS.get(self.parent, hex(self.parent))} prio {self.prio} {self.name}"


@dataclass(frozen=True)
class Route:
    family: int
    dst: str
    oif: int
    ifname: str
    table: int

    def __str__(self) -> str:
        return f"{self.dst} dev {self.ifname}" + (f" table {self.table}" if self.table != 254 else "")


@dataclass
class HostTraces:
    """Everything of ours found on the host; ``describe`` lists it for the confirmation."""

    tc_filters: list[TcFilter] = field(default_factory=list)
    xdp_programs: list[xdp.Attached] = field(default_factory=list)
    pins: list[str] = field(default_factory=list)
    pin_dirs: list[str] = field(default_factory=list)
    routes: list[Route] = field(default_factory=list)
    proxy_routes: list[proxyroute.ProxyRoute] = field(default_factory=list)
    links: dict[int, str] = field(default_factory=dict)
    chains: list[tuple[str, str, str]] = field(default_factory=list)  # (binary, table, chain)

    def empty(self) -> bool:
        return not (self.tc_filters or self.xdp_programs or self.pins or self.routes or self.proxy_routes
                    or self.links or self.chains)

    def describe(self) -> list[str]:
        sections = [("tc filters", [str(f) for f in self.tc_filters]),
                    ("XDP programs", [str(a) for a in self.xdp_programs]),
                    ("pinned BPF maps, programs and links", self.pins),
                    ("routes", [str(r) for r in self.routes]),
                    ("L7 proxy policy routing", [str(r) for r in self.proxy_routes]),
                    ("links", sorted(self.links.values())),
                    ("iptables chains (and the jumps into them)", [" ".join(c) for c in self.chains])]
        return [f"{title}\n" + "".join(f"  {item}\n" for item in items) for title, items in sections if items]


def _filters(ip: IPRoute, links: list, ours: dict[int, str], prog_ids: set[int]) -> list[TcFilter]:
    out = []
    for link in links:
        for parent in _PARENTS:
            try:
                msgs = ip.get_filters(index=link["index"], parent=parent)
            except NetlinkError as exc:
                if exc.code in (errno.EINVAL, errno.ENOENT, errno.ENODEV):
                    continue  # no clsact qdisc here
                raise
            for m in msgs:
                if m.get_attr("TCA_KIND") != "bpf":
                    continue
                opts = m.get_attr("TCA_OPTIONS")
                name = (opts.get_attr("TCA_BPF_NAME") if opts is not None else None) or ""
                if FILTER_NAME in name and (link["index"] in ours or _filter_prog_id(opts) in prog_ids):
                    info = m["info"]
                    # tcm_info: priority << 16 | protocol in network byte order
                    out.append(TcFilter(link.get("ifname") or str(link["index"]), link["index"], parent,
                                        info >> 16, socket.ntohs(info & 0xFFFF), m["handle"], name))
    return out


def _routes(ip: IPRoute, ours: dict[int, str]) -> list[Route]:
    out = []
    for r in ip.route("dump"):  # both families, every table
        oif = r.get_attr("RTA_OIF")
        table = r.get_attr("RTA_TABLE") or r["table"]
        if oif not in ours or table == 255:  # the local table follows the addresses
            continue
        dst = r.get_attr("RTA_DST")
        dst = f"{dst}/{r['dst_len']}" if dst else "default"
        out.append(Route(r["family"], dst, oif, ours[oif], table))
    return out


def _chains() -> list[tuple[str, str, str]]:
    out = []
    for binary in ("iptables", "ip6tables"):
        if shutil.which(binary) is None:
            continue
        for table, chain, _parent in CHAINS:
            res = subprocess.run([binary, "-w", "5", "-t", table, "-S", chain], capture_output=True, text=True)
            if res.returncode == 0:
                out.append((binary, table, chain))
    return out


def _pins(pin_root: str, prog_dir: str, links_dir: str) -> list[str]:
    out = []
    for directory, names in ((pin_root, OUR_MAPS | SOCKLB_PINS),
                             (prog_dir, {n for p in (*ALL_PROGRAMS, xdp.XDP_PROGRAM) for n in (p, p + "_new")}),
                             (links_dir, {n for p in SOCKLB_PROGRAMS for n in (p, p + "_new")})):
        try:
            present = sorted(os.listdir(directory))
        except FileNotFoundError:
            continue
        out += [os.path.join(directory, n) for n in present if n in names]
    return out


def find(bpf_root: str) -> HostTraces:
    """What of ours is on the host now (nothing is changed)."""
    pin_root, prog_dir = defaults.bpf_pin_root(bpf_root), defaults.bpf_prog_dir(bpf_root)
    with IPRoute() as ip:
        links = list(ip.get_links())
        ours = {l["index"]: l.get("ifname") for l in links if is_our_link(l.get("ifname") or "")}
        traces = HostTraces(tc_filters=_filters(ip, links, ours, pinned_prog_ids(prog_dir)),
                            routes=_routes(ip, ours), proxy_routes=proxyroute.find(ip), links=ours)
    xdp_id = xdp.pinned_id(prog_dir)
    traces.xdp_programs = xdp.find_ours({xdp_id}) if xdp_id else []
    links_dir = defaults.socketlb_links_dir(bpf_root)
    traces.pins = _pins(pin_root, prog_dir, links_dir)
    # Children first: /X/tc/globals before /X/tc (each removed only if empty).
    traces.pin_dirs = [pin_root, os.path.dirname(pin_root), prog_dir, links_dir, os.path.dirname(links_dir),
                       os.path.dirname(os.path.dirname(links_dir)), os.path.dirname(prog_dir)]
    traces.chains = _chains()
    return traces


def remove(traces: HostTraces) -> tuple[list[str], list[str]]:
    """Remove what :func:`find` found: (what was removed, errors). Each step goes
    on after another's failure, so one stuck item does not leave the rest."""
    done: list[str] = []
    errors: list[str] = []
    with IPRoute() as ip:
        for f in traces.tc_filters:
            try:
                ip.tc("del-filter", "bpf", f.ifindex, f.handle, parent=f.parent, prio=f.prio, protocol=f.protocol)
                done.append(f"removed tc filter {f}")
            except NetlinkError as exc:
                if exc.code not in (errno.ENOENT, errno.ENODEV):  # gone already, or its link is
                    errors.append(f"tc filter {f}: {os.strerror(exc.code)}")
        for attached in traces.xdp_programs:
            try:
                xdp.detach(attached)
                done.append(f"removed XDP program from {attached.ifname}")
            except OSError as exc:
                errors.append(f"XDP on {attached.ifname}: {exc}")
        for path in traces.pins:
            try:
                os.unlink(path)
                done.append(f"removed {path}")
            except FileNotFoundError:
                pass
            except OSError as exc:
                errors.append(f"{path}: {exc.strerror}")
        for d in traces.pin_dirs:
            try:
                os.rmdir(d)
            except OSError:
                pass  # absent, or holds what is not ours
        for r in traces.routes:
            try:
                ip.route("del", family=r.family, dst=r.dst if r.dst != "default" else None,
                         oif=r.oif, table=r.table)
                done.append(f"removed route {r}")
            except NetlinkError as exc:
                if exc.code not in (errno.ESRCH, errno.ENOENT, errno.ENODEV):
                    errors.append(f"route {r}: {os.strerror(exc.code)}")
        failed = proxyroute.remove(traces.proxy_routes, ip)
        errors += failed
        done += [f"removed {r}" for r in traces.proxy_routes if not any(e.startswith(str(r)) for e in failed)]
        for index, name in sorted(traces.links.items(), key=lambda kv: kv[1]):
            try:
                ip.link("del", index=index)
                done.append(f"removed link {name}")
            except NetlinkError as exc:
                if exc.code == errno.ENODEV:  # a veth peer goes with its pair
                    done.append(f"removed link {name} (with its veth peer)")
                else:
                    errors.append(f"link {name}: {os.strerror(exc.code)}")
    if traces.chains:
        try:
            asyncio.run(Iptables(ipv6=True).remove_all())
            done += [f"removed {binary} {table} chain {chain}" for binary, table, chain in traces.chains]
        except Exception as exc:  # an iptables failure is reported like the others
            errors.append(f"iptables: {exc}")
        errors += [f"{b} {t} chain {c} is still there" for b, t, c in _chains()]
    return done, errors
