"""Fixtures for datapath tests on the REAL kernel with REAL packets.

Every test gets throwaway "containers" (network namespaces) wired like the
agent wires Docker containers: a veth pair whose host side (``dc<run><x>``)
stays in the root namespace and carries the BPF programs; inside, ``eth0``
holds a /32 (and /128) with a default route via a router address that lives
on a host-side "router" veth (like ``cilium_host``); the host has a
/32 (/128) route per container with ``src`` = router address, proxy_arp and
proxy NDP (+ per-link IPv6 forwarding, needed for proxy NDP) on the host veth.
Maps are pinned under a test-only root ``/sys/fs/bpf/dctest-<id>/``.

Everything created is recorded and removed in the fixture finalizer even when
the test fails. Missing root or tools make the tests FAIL, never skip.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from docker_cilium.datapath.loader import Datapath, compile_datapath, unpin_all
from docker_cilium import defaults
from docker_cilium.datapath.bpf import ensure_bpffs
from docker_cilium.datapath.maps.lxcmap import EndpointInfo
from docker_cilium.identity import reserved

PYTHON = sys.executable  # stdlib only inside the namespaces


def sh(*args: str, check: bool = True, timeout: float = 20) -> subprocess.CompletedProcess:
    res = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)
    if check and res.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} -> {res.returncode}: {res.stderr.strip()}")
    return res


def write_sysctl(path: str, value: str) -> None:
    with open(os.path.join("/proc/sys", path), "w") as f:
        f.write(value)


# traffic helper run inside namespaces (stdlib only): see nettool.py
NETTOOL = Path(__file__).with_name("nettool.py")


# --------------------------------------------------------------------------
# topology
# --------------------------------------------------------------------------
@dataclass
class Container:
    name: str            # short name: a, b, c
    netns: str
    host_if: str
    ifindex: int
    mac: str             # container eth0 MAC
    node_mac: str        # host veth MAC
    ipv4: str
    ipv6: str
    lxc_id: int
    identity: int
    servers: list = field(default_factory=list)

    def endpoint(self, ingress: bool = False, egress: bool = False) -> EndpointInfo:
        return EndpointInfo(ifindex=self.ifindex, lxc_id=self.lxc_id, sec_identity=self.identity,
                            mac=self.mac, node_mac=self.node_mac, ipv4=self.ipv4, ipv6=self.ipv6,
                            ingress_enforced=ingress, egress_enforced=egress)


class Sniffer:
    """A running nettool sniff; ``count()`` waits for its result."""

    def __init__(self, proc: subprocess.Popen):
        self.proc = proc

    def count(self) -> int:
        out, _ = self.proc.communicate(timeout=30)
        return int(out.strip())


class Topology:
    """Namespaces + veths + routes for one test; ``cleanup()`` undoes all."""

    def __init__(self, tool_path: str):
        self.run_id = f"{os.getpid() % 0xFFFF:04x}{random.randrange(0x100):02x}"
        self.tool = tool_path
        self.undo: list[tuple[str, tuple]] = []
        self.containers: dict[str, Container] = {}
        self.sniffers: list[subprocess.Popen] = []
        self.octet = self._pick_subnet()
        self.prefix4 = f"10.199.{self.octet}"
        self.prefix6 = f"fd99::{self.octet:x}:"
        self.router4 = f"{self.prefix4}.1"
        self.router6 = f"{self.prefix6}1"
        self._make_router()

    # -- bookkeeping --
    def _record(self, kind: str, *args) -> None:
        self.undo.append((kind, args))

    def cleanup(self) -> list[str]:
        errors = []
        for p in self.sniffers:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=5)
        for c in self.containers.values():
            for p in c.servers:
                try:
                    p.stdin.close()
                    p.kill()
                    p.wait(timeout=5)
                except Exception as e:  # noqa: BLE001
                    errors.append(f"server: {e}")
        for kind, args in reversed(self.undo):
            try:
                if kind == "link":
                    sh("ip", "link", "del", args[0], check=False)
                elif kind == "netns":
                    sh("ip", "netns", "del", args[0], check=False)
                elif kind == "iptables":
                    sh(args[0], "-D", *args[1:], check=False)
                elif kind == "route":
                    sh("ip", *args, check=False)
            except Exception as e:  # noqa: BLE001
                errors.append(f"{kind} {args}: {e}")
        self.undo.clear()
        return errors

    # -- setup --
    @staticmethod
    def _pick_subnet() -> int:
        used = sh("ip", "-4", "route", "show", "table", "all").stdout
        used += sh("ip", "-4", "addr").stdout
        for _ in range(200):
            o = random.randrange(100, 250)
            if f"10.199.{o}." not in used and "10.199.0.0/16" not in used:
                return o
        raise RuntimeError("no free 10.199.x.0/24")

    def _accept(self, ifname: str) -> None:
        for binary in ("iptables", "ip6tables"):
            for rule in (("FORWARD", "-i", ifname, "-j", "ACCEPT"),
                         ("FORWARD", "-o", ifname, "-j", "ACCEPT")):
                sh(binary, "-I", *rule)
                self._record("iptables", binary, *rule)

    def _make_router(self) -> None:
        h, n = f"dc{self.run_id}h", f"dc{self.run_id}n"
        sh("ip", "link", "add", h, "type", "veth", "peer", "name", n)
        self._record("link", h)
        sh("ip", "link", "set", h, "up")
        sh("ip", "link", "set", n, "up")
        sh("ip", "addr", "add", f"{self.router4}/32", "dev", h)
        sh("ip", "-6", "addr", "add", f"{self.router6}/128", "dev", h, "nodad")

    def add_container(self, name: str, host_no: int, lxc_id: int, identity: int) -> Container:
        ns = f"dctest-{os.getpid()}-{self.run_id}-{name}"
        host_if = f"dc{self.run_id}{name}"
        ipv4 = f"{self.prefix4}.{host_no}"
        ipv6 = f"{self.prefix6}{host_no:x}"
        sh("ip", "netns", "add", ns)
        self._record("netns", ns)
        sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", f"{host_if}p")
        self._record("link", host_if)
        sh("ip", "link", "set", f"{host_if}p", "netns", ns)
        nse = ("ip", "netns", "exec", ns)
        sh(*nse, "ip", "link", "set", f"{host_if}p", "name", "eth0")
        sh(*nse, "ip", "link", "set", "lo", "up")
        sh(*nse, "ip", "link", "set", "eth0", "up")
        sh(*nse, "ip", "addr", "add", f"{ipv4}/32", "dev", "eth0")
        sh(*nse, "ip", "-6", "addr", "add", f"{ipv6}/128", "dev", "eth0", "nodad")
        sh(*nse, "ip", "route", "add", self.router4, "dev", "eth0", "scope", "link")
        sh(*nse, "ip", "route", "add", "default", "via", self.router4, "dev", "eth0")
        sh(*nse, "ip", "-6", "route", "add", self.router6, "dev", "eth0")
        sh(*nse, "ip", "-6", "route", "add", "default", "via", self.router6, "dev", "eth0")
        # host side
        write_sysctl(f"net/ipv6/conf/{host_if}/disable_ipv6", "0")
        sh("ip", "link", "set", host_if, "up")
        write_sysctl(f"net/ipv4/conf/{host_if}/proxy_arp", "1")
        write_sysctl(f"net/ipv4/conf/{host_if}/forwarding", "1")
        write_sysctl(f"net/ipv6/conf/{host_if}/forwarding", "1")
        write_sysctl(f"net/ipv6/conf/{host_if}/proxy_ndp", "1")
        # proxied NAs are otherwise delayed randomly by up to 0.8 s
        write_sysctl(f"net/ipv6/neigh/{host_if}/proxy_delay", "0")
        sh("ip", "-6", "neigh", "add", "proxy", self.router6, "dev", host_if)
        sh("ip", "route", "add", f"{ipv4}/32", "dev", host_if, "scope", "link",
           "src", self.router4)
        sh("ip", "-6", "route", "add", f"{ipv6}/128", "dev", host_if, "src", self.router6)
        self._accept(host_if)
        links = json.loads(sh("ip", "-j", "link", "show", host_if).stdout)
        inner = json.loads(sh(*nse, "ip", "-j", "link", "show", "eth0").stdout)
        c = Container(name, ns, host_if, links[0]["ifindex"], inner[0]["address"],
                      links[0]["address"], ipv4, ipv6, lxc_id, identity)
        self.containers[name] = c
        return c

    def blackhole(self, host_no: int) -> tuple[str, str]:
        """Unused addresses of the test subnet that the host silently drops
        (a destination that never answers, without leaving the machine)."""
        v4, v6 = f"{self.prefix4}.{host_no}", f"{self.prefix6}{host_no:x}"
        for fam, addr in (("-4", f"{v4}/32"), ("-6", f"{v6}/128")):
            sh("ip", fam, "route", "add", "blackhole", addr)
            self._record("route", fam, "route", "del", "blackhole", addr)
        return v4, v6

    def wait_ready(self) -> None:
        """Let IPv6 link-local addresses come up (tentative -> ready)."""
        deadline = time.time() + 5
        for c in self.containers.values():
            while time.time() < deadline:
                out = sh("ip", "netns", "exec", c.netns, "ip", "-6", "addr", "show",
                         "dev", "eth0").stdout
                out += sh("ip", "-6", "addr", "show", "dev", c.host_if).stdout
                if "tentative" not in out and out.count("fe80") >= 2:
                    break
                time.sleep(0.05)

    # -- traffic --
    def _exec(self, c: Container | None, *args: str, timeout: float = 15) -> int:
        pre = ("ip", "netns", "exec", c.netns) if c is not None else ()
        return sh(*pre, PYTHON, self.tool, *args, check=False, timeout=timeout).returncode

    def ping(self, src: Container | None, dst: str, from_addr: str | None = None,
             timeout: float = 1.0) -> bool:
        args = ["ping", dst, f"timeout={timeout}"] + ([f"src={from_addr}"] if from_addr else [])
        return self._exec(src, *args, timeout=timeout + 15) == 0

    def tcp(self, src: Container | None, dst: str, port: int, from_addr: str | None = None) -> int:
        args = ["tcp", dst, str(port)] + ([f"src={from_addr}"] if from_addr else [])
        return self._exec(src, *args)

    def udp(self, src: Container | None, dst: str, port: int) -> int:
        return self._exec(src, "udp", dst, str(port))

    def bulk(self, src: Container, dst: str, port: int, mbytes: int) -> tuple[int, float]:
        """(exit code, Gbit/s) of an mbytes MiB TCP transfer to a sink."""
        res = sh("ip", "netns", "exec", src.netns, PYTHON, self.tool, "bulk", dst, str(port),
                 str(mbytes), check=False, timeout=60)
        return res.returncode, float(res.stdout.strip() or 0)

    def run_tool(self, c: Container | None, *args: object) -> int:
        """Run one nettool command in c's namespace (None: the host)."""
        return self._exec(c, *map(str, args))

    def sniff(self, c: Container | None, spec: str, marker: bytes,
              seconds: float = 1.5) -> "Sniffer":
        """Start counting packets with marker reaching spec in c (see nettool
        sniff); returns once the socket is open."""
        pre = ["ip", "netns", "exec", c.netns] if c is not None else []
        p = subprocess.Popen(pre + [PYTHON, self.tool, "sniff", spec, marker.hex(), str(seconds)],
                             stdout=subprocess.PIPE, text=True)
        self.sniffers.append(p)
        if p.stdout.readline().strip() != "ready":
            raise RuntimeError(f"sniffer {spec} failed to start")
        return Sniffer(p)

    def serve(self, c: Container, *ports: int | str, mode: str = "serve") -> None:
        """Start a long-running nettool mode in c (serve, sink, tcphold ...),
        stopped at cleanup; returns once it printed "ready"."""
        p = subprocess.Popen(["ip", "netns", "exec", c.netns, PYTHON, self.tool, mode,
                              *map(str, ports)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True)
        c.servers.append(p)
        line = p.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"server in {c.netns} failed to start: {line!r}")


# --------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------
@pytest.fixture(scope="session", autouse=True)
def _privileged_requirements():
    if os.geteuid() != 0:
        pytest.fail("tests/privileged need root (CAP_NET_ADMIN, CAP_BPF, CAP_SYS_ADMIN)",
                    pytrace=False)
    missing = [t for t in ("ip", "iptables", "ip6tables", "clang", "bpftool")
               if not shutil.which(t)]
    if missing:
        pytest.fail(f"tests/privileged need these tools: {', '.join(missing)}", pytrace=False)
    try:
        ensure_bpffs()
    except OSError as e:
        pytest.fail(f"cannot mount bpffs: {e}", pytrace=False)
    sweep_stale()


def _pid_alive(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}")


def sweep_stale() -> None:
    """Remove what killed test runs (SIGKILL: no finalizers) left behind.
    Names carry the creating pid; only dead pids' resources are touched."""
    for ns in sh("ip", "netns", "list", check=False).stdout.split():
        parts = ns.split("-")
        if ns.startswith("dctest-") and len(parts) == 4 and parts[1].isdigit() \
                and not _pid_alive(int(parts[1])):
            run_id = parts[2]
            sh("ip", "netns", "del", ns, check=False)
            sh("ip", "link", "del", f"dc{run_id}h", check=False)
            for binary in ("iptables", "ip6tables"):
                for line in sh(binary, "-S", "FORWARD", check=False).stdout.splitlines():
                    if f"dc{run_id}" in line and line.startswith("-A "):
                        sh(binary, "-D", *line.split()[1:], check=False)
    for d in os.listdir(defaults.BPFFS_ROOT):
        parts = d.split("-")
        if d.startswith("dctest-") and len(parts) == 3 and parts[1].isdigit() \
                and not _pid_alive(int(parts[1])):
            shutil.rmtree(os.path.join(defaults.BPFFS_ROOT, d), ignore_errors=True)


@pytest.fixture(scope="session")
def datapath_object(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bpfobj")
    t0 = time.perf_counter()
    obj = compile_datapath(out_dir=out)
    compile_ms = (time.perf_counter() - t0) * 1000
    t0 = time.perf_counter()
    assert compile_datapath(out_dir=out) == obj
    cached_ms = (time.perf_counter() - t0) * 1000
    print(f"\n[timing] datapath compile {compile_ms:.0f} ms, cached {cached_ms:.1f} ms")
    return obj


@pytest.fixture
def pin_root():
    base = os.path.join(defaults.BPFFS_ROOT, f"dctest-{os.getpid()}-{random.randrange(1 << 30):x}")
    root = defaults.bpf_pin_root(base)
    yield root
    unpin_all(root)
    for dirpath, dirnames, filenames in os.walk(base, topdown=False):
        for f in filenames:
            os.unlink(os.path.join(dirpath, f))
        os.rmdir(dirpath)


@pytest.fixture
def datapath(datapath_object, pin_root):
    dp = Datapath.load(datapath_object, pin_root=pin_root)
    print(f"\n[timing] datapath load {dp.timings['load_ms']:.1f} ms")
    yield dp
    dp.close()


@pytest.fixture
def topo():
    t = Topology(str(NETTOOL))
    try:
        yield t
    finally:
        errors = t.cleanup()
        leftovers = sh("ip", "-o", "link", "show").stdout.count(f"dc{t.run_id}")
        assert not errors and not leftovers, (errors, leftovers)


@pytest.fixture
def small_ct(topo, pin_root, tmp_path_factory):
    """A datapath with a 1024-entry CT table and a budget of 64 unreplied
    entries per endpoint, with the abc containers."""
    obj = compile_datapath(out_dir=tmp_path_factory.mktemp("smallct"),
                           defines={"CT_MAP_SIZE": 1024, "CT_EP_BUDGET": 64})
    dp = Datapath.load(obj, pin_root=pin_root)
    try:
        yield dp, make_abc(topo, dp)
    finally:
        dp.close()


@pytest.fixture
def abc(topo, datapath):
    """Three containers A, B, C on attached host veths, registered in the
    endpoint map without enforcement; router addresses are identity host."""
    return make_abc(topo, datapath)


def make_abc(topo: Topology, datapath: Datapath) -> list[Container]:
    """The ``abc`` containers on any loaded datapath (e.g. one compiled with
    other defines)."""
    cs = [topo.add_container("a", 2, 11, 1001),
          topo.add_container("b", 3, 12, 1002),
          topo.add_container("c", 4, 13, 1003)]
    ipc = datapath.maps.ipcache
    ipc.upsert(f"{topo.router4}/32", reserved.HOST)
    ipc.upsert(f"{topo.router6}/128", reserved.HOST)
    timings = []
    for c in cs:
        t0 = time.perf_counter()
        datapath.attach(c.ifindex)
        datapath.maps.endpoints.upsert(c.endpoint())
        ipc.upsert(f"{c.ipv4}/32", c.identity)
        ipc.upsert(f"{c.ipv6}/128", c.identity)
        timings.append((time.perf_counter() - t0) * 1000)
    print(f"\n[timing] per-endpoint attach + map updates: "
          f"{', '.join(f'{t:.1f}' for t in timings)} ms")
    topo.wait_ready()
    return cs
