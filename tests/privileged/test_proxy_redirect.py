"""Steering to the L7 proxy on the real kernel (bpf_src/lib/proxy.h).

A small transparent TCP listener in the host's namespace stands in for the
proxy (IP_TRANSPARENT on 0.0.0.0:P and [::]:P, as proxy/manager.py opens
them): it records each accepted connection's local address (= the original
destination) and peer, and answers every message with "ok:" + the message,
as nettool's servers do, so the clients in the namespaces cannot tell it
from the real server except by what it records. The topology's router veth
plays cilium_host (from-host attached on its ingress); the policy routing of
datapath/proxyroute.py is installed for the test (and removed if it added it).
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field

import pytest
from pyroute2 import NetNS

from docker_cilium import defaults
from docker_cilium.datapath import proxyroute
from docker_cilium.datapath.drop import DROP_POLICY, DROP_PROXY_LOOKUP_FAILED
from docker_cilium.datapath.link import LinkManager
from docker_cilium.datapath.maps.ctmap import CT_EGRESS, CT_F_PROXY_REDIRECT, CT_INGRESS
from docker_cilium.datapath.maps.metricsmap import METRIC_EGRESS, METRIC_INGRESS
from docker_cilium.datapath.maps.policymap import PolicyEntry
from docker_cilium.datapath.marks import MARK_MAGIC_PROXY_EGRESS, MARK_MAGIC_PROXY_INGRESS, identity_mark
from docker_cilium.identity.reserved import HOST as IDENTITY_HOST

from tests.unit.test_cli import run as run_cli

from .conftest import PYTHON, sh, write_sysctl

pytestmark = pytest.mark.privileged

OK, TIMEOUT = 0, 2
PORT = 80
IP_TRANSPARENT = 19
IPV6_TRANSPARENT = 75
SO_MARK = 36


@dataclass
class Accepted:
    local: tuple
    peer: tuple
    messages: int = 0


@dataclass
class TransparentListener:
    """The stand-in proxy: transparent listeners on one port, v4 and v6."""

    port: int = 0
    accepted: list[Accepted] = field(default_factory=list)
    socks: list[socket.socket] = field(default_factory=list)
    _threads: list[threading.Thread] = field(default_factory=list)
    _stop: bool = False

    def start(self) -> "TransparentListener":
        for _attempt in range(20):
            try:
                self._open()
                break
            except OSError:  # the v4 port is taken in v6: another one
                self.close()
        else:
            raise RuntimeError("no port free for both families")
        self._threads = [threading.Thread(target=self._accept_loop, args=(s,), daemon=True)
                         for s in self.socks]
        for t in self._threads:
            t.start()
        return self

    def _open(self) -> None:
        s4 = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.socks = [s4]
        s4.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
        s4.bind(("0.0.0.0", 0))
        self.port = s4.getsockname()[1]
        s6 = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        self.socks.append(s6)
        s6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s6.setsockopt(socket.IPPROTO_IPV6, IPV6_TRANSPARENT, 1)
        s6.bind(("::", self.port))
        for s in self.socks:
            s.listen(64)
            s.settimeout(0.2)

    def _accept_loop(self, ls: socket.socket) -> None:
        while not self._stop:
            try:
                c, peer = ls.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            a = Accepted(c.getsockname()[:2], peer[:2])
            self.accepted.append(a)
            threading.Thread(target=self._serve, args=(c, a), daemon=True).start()

    @staticmethod
    def _serve(c: socket.socket, a: Accepted) -> None:
        c.settimeout(5)
        with c:
            while True:
                try:
                    data = c.recv(100)
                    if not data:
                        return
                    a.messages += 1
                    c.sendall(b"ok:" + data)
                except OSError:
                    return

    def close(self) -> None:
        """Stop listening; returns once the sockets are gone (a socket closed
        while another thread waits in accept() lives until that returns)."""
        self._stop = True
        for t in self._threads:
            t.join()
        self._threads = []
        for s in self.socks:
            s.close()
        self.socks = []


#: host-wide: test processes of other checkouts and agents share these rules
ROUTES_LOCK = "/run/dc-test-proxyroute.lock"


@pytest.fixture
def proxy_routes():
    """Cilium's proxy policy routing in the host's namespace for the test.

    The rules are the host's, not the test's: another test process may be
    steering through them, or an agent (whose ensure() found them and added
    nothing) may have started meanwhile. Each user holds a shared lock on
    ROUTES_LOCK; the lock file records that a test added them, and the last
    user out removes them, unless an agent's datapath (cilium_host) now
    relies on them (`cilium cleanup` removes them with it)."""
    fd = os.open(ROUTES_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        if proxyroute.ensure():
            os.pwrite(fd, b"added", 0)
        fcntl.flock(fd, fcntl.LOCK_SH)
        yield
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return  # still in use: its last user removes them
        if os.pread(fd, 5, 0) == b"added":
            os.ftruncate(fd, 0)
            if not os.path.exists(f"/sys/class/net/{defaults.HOST_DEVICE}"):
                assert not proxyroute.remove(proxyroute.find())
    finally:
        os.close(fd)


@pytest.fixture
def listener():
    lst = TransparentListener().start()
    yield lst
    lst.close()


@pytest.fixture
def host_dev(topo, datapath):
    """The router veth as cilium_host: from-host on its ingress, hairpinned
    packets (from the host's own addresses too) accepted."""
    name = f"dc{topo.run_id}h"
    write_sysctl(f"net/ipv4/conf/{name}/rp_filter", "0")
    write_sysctl(f"net/ipv4/conf/{name}/accept_local", "1")
    ifindex = socket.if_nametoindex(name)
    datapath.attach_host(ifindex)
    yield ifindex
    datapath.detach_host(ifindex)   # the link itself goes with the topology


def addr(c, family: int) -> str:
    return c.ipv4 if family == 4 else c.ipv6


def drops(datapath, reason: int, direction: int) -> int:
    return datapath.maps.metrics.dump().get((reason, direction), (0, 0))[0]


def ct_entry(datapath, saddr: str, daddr: str, dport: int, direction: int):
    found = [e for e in datapath.maps.ct.dump() if e.saddr == saddr and e.daddr == daddr
             and e.dport == dport and e.proto == 6 and e.direction == direction]
    assert len(found) == 1, found
    return found[0]


def wait_accepted(lst: TransparentListener, n: int) -> list[Accepted]:
    deadline = time.time() + 3
    while len(lst.accepted) < n and time.time() < deadline:
        time.sleep(0.02)
    return lst.accepted


FAMILIES = pytest.mark.parametrize("family", [4, 6])


@FAMILIES
def test_egress_redirect_to_a_remote_destination(topo, datapath, abc, proxy_routes, listener, family):
    """A's egress L7 entry for world:80 sends its connection to the proxy,
    which sees the original (remote, never answering) destination and A as
    peer; the answers reach A; the CT entry is marked for the proxy."""
    a, _b, _c = abc
    remote = topo.blackhole(50)[0 if family == 4 else 1]
    datapath.maps.endpoints.upsert(a.endpoint(egress=True))
    datapath.maps.policy.set_endpoint_policy(a.lxc_id, [
        PolicyEntry(0, "egress", PORT, "TCP", proxy_port=listener.port)])
    assert topo.tcp(a, remote, PORT) == OK
    [acc] = wait_accepted(listener, 1)
    assert acc.local == (remote, PORT)
    assert acc.peer[0] == addr(a, family)
    e = ct_entry(datapath, addr(a, family), remote, PORT, CT_EGRESS)
    assert e.flags & CT_F_PROXY_REDIRECT
    # a port without a proxy port is plain L4: not redirected (and dropped
    # on the way to the blackhole: no answer at all)
    assert topo.tcp(a, remote, PORT + 1) != OK
    assert len(listener.accepted) == 1


@FAMILIES
def test_egress_redirect_to_a_local_endpoint(topo, datapath, abc, proxy_routes, listener, family):
    """A's egress L7 entry for B: the proxy gets A -> B:80 (never B's own
    server); B's ingress, enforced without L7 for A, does not redirect it
    again and the egress proxy's port wins."""
    a, b, _c = abc
    topo.serve(b, PORT)
    datapath.maps.endpoints.upsert(a.endpoint(egress=True))
    datapath.maps.endpoints.upsert(b.endpoint(ingress=True))
    datapath.maps.policy.set_endpoint_policy(a.lxc_id, [
        PolicyEntry(b.identity, "egress", PORT, "TCP", proxy_port=listener.port)])
    datapath.maps.policy.set_endpoint_policy(b.lxc_id, [PolicyEntry(a.identity, "ingress", PORT, "TCP")])
    assert topo.tcp(a, addr(b, family), PORT) == OK
    [acc] = wait_accepted(listener, 1)
    assert acc.local == (addr(b, family), PORT) and acc.peer[0] == addr(a, family)


@FAMILIES
def test_ingress_redirect_between_local_endpoints(topo, datapath, abc, proxy_routes, listener, family):
    """A -> B:80 with B's ingress L7 entry for A: from-container hands it to
    the proxy instead of B (B runs no server on 80); C, allowed without L7 on
    the same port, still reaches B's own server directly."""
    a, b, c = abc
    topo.serve(b, PORT)
    datapath.maps.endpoints.upsert(b.endpoint(ingress=True))
    datapath.maps.policy.set_endpoint_policy(b.lxc_id, [
        PolicyEntry(a.identity, "ingress", PORT, "TCP", proxy_port=listener.port),
        PolicyEntry(c.identity, "ingress", PORT, "TCP")])
    assert topo.tcp(a, addr(b, family), PORT) == OK
    [acc] = wait_accepted(listener, 1)
    assert acc.local == (addr(b, family), PORT) and acc.peer[0] == addr(a, family)
    assert ct_entry(datapath, addr(a, family), addr(b, family), PORT, CT_EGRESS).flags & CT_F_PROXY_REDIRECT
    assert topo.tcp(c, addr(b, family), PORT) == OK
    assert len(listener.accepted) == 1
    assert not ct_entry(datapath, addr(c, family), addr(b, family), PORT, CT_EGRESS).flags & CT_F_PROXY_REDIRECT


@FAMILIES
def test_hairpin_from_the_host(topo, datapath, pin_root, abc, proxy_routes, listener, host_dev, family):
    """host -> B:80 with B's ingress L7 entry for the host: to-container
    hairpins the SYN through cilium_host, from-host puts it on the listener;
    the proxy's answers reach the host's client; `cilium bpf proxy list`
    shows the connection."""
    _a, b, _c = abc
    topo.serve(b, PORT)
    datapath.maps.endpoints.upsert(b.endpoint(ingress=True))
    datapath.maps.policy.set_endpoint_policy(b.lxc_id, [
        PolicyEntry(IDENTITY_HOST, "ingress", PORT, "TCP", proxy_port=listener.port)])
    assert topo.tcp(None, addr(b, family), PORT) == OK
    [acc] = wait_accepted(listener, 1)
    router = topo.router4 if family == 4 else topo.router6
    assert acc.local == (addr(b, family), PORT) and acc.peer[0] == router
    assert ct_entry(datapath, router, addr(b, family), PORT, CT_INGRESS).flags & CT_F_PROXY_REDIRECT
    res = run_cli(None, "bpf", "proxy", "list", "--bpf-root", defaults.bpf_root_of(pin_root))
    [row] = [line.split() for line in res.output.splitlines()[1:]]
    dst = f"{addr(b, family)}:{PORT}" if family == 4 else f"[{addr(b, family)}]:{PORT}"
    assert row[0] == "TCP" and row[1].startswith(router if family == 4 else f"[{router}]")
    assert row[2:5] == [dst, "IN", str(IDENTITY_HOST)]


def converse(topo, src, dst: str, port: int, n: int) -> list[str]:
    """n exchanges over ONE connection from src (None: the host)."""
    pre = ["ip", "netns", "exec", src.netns] if src is not None else []
    p = subprocess.run(pre + [PYTHON, topo.tool, "converse", dst, str(port)], input="\n" * n,
                       capture_output=True, text=True, timeout=30)
    return p.stdout.split()


@FAMILIES
@pytest.mark.parametrize("client", ["container", "host"])
def test_later_packets_reach_the_same_socket(topo, datapath, abc, proxy_routes, listener, host_dev,
                                             family, client):
    """Every packet of a redirected connection after the SYN goes to the
    proxy's connection socket (found by the original tuple), from a container
    (from-container) and through the hairpin (from-host)."""
    a, b, _c = abc
    datapath.maps.endpoints.upsert(b.endpoint(ingress=True))
    datapath.maps.policy.set_endpoint_policy(b.lxc_id, [
        PolicyEntry(a.identity, "ingress", PORT, "TCP", proxy_port=listener.port),
        PolicyEntry(IDENTITY_HOST, "ingress", PORT, "TCP", proxy_port=listener.port)])
    out = converse(topo, a if client == "container" else None, addr(b, family), PORT, 10)
    assert out == ["ready"] + ["ok:x"] * 10
    [acc] = wait_accepted(listener, 1)
    assert acc.messages == 10


@FAMILIES
@pytest.mark.parametrize("client", ["container", "host"])
def test_flow_opened_under_l4_meets_the_proxy_once_l7(topo, datapath, abc, proxy_routes, listener, host_dev,
                                                     family, client):
    """A connection B's L4-only entry let open straight to B's server does
    not go on past L7 once that entry gets a proxy port: its next packet goes
    to the proxy's listener, which resets it (from-container, and to-container
    through the hairpin), and B's server gets nothing more."""
    a, b, _c = abc
    topo.serve(b, "B", PORT, mode="idserve")   # keeps the connection open
    datapath.maps.endpoints.upsert(b.endpoint(ingress=True))
    src = a if client == "container" else None
    ident = a.identity if client == "container" else IDENTITY_HOST
    datapath.maps.policy.set_endpoint_policy(b.lxc_id, [PolicyEntry(ident, "ingress", PORT, "TCP")])
    pre = ["ip", "netns", "exec", src.netns] if src is not None else []
    p = subprocess.Popen(pre + [PYTHON, topo.tool, "converse", addr(b, family), str(PORT)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "ready"
        p.stdin.write("\n")
        p.stdin.flush()
        assert p.stdout.readline().strip() == "B"     # B's own server, under L4
        datapath.maps.policy.set_endpoint_policy(b.lxc_id, [
            PolicyEntry(ident, "ingress", PORT, "TCP", proxy_port=listener.port)])
        p.stdin.write("\n")
        p.stdin.flush()
        assert p.stdout.readline().strip() == "closed"
    finally:
        p.kill()
        p.wait()
    assert listener.accepted == []


@FAMILIES
def test_proxy_upstream_mark_is_not_redirected_and_carries_the_identity(topo, datapath, abc, proxy_routes,
                                                                       listener, host_dev, family):
    """The ingress proxy's upstream connection (SO_MARK PROXY_INGRESS | A)
    from the host reaches B's server although B's entry for A has a proxy
    port, and is judged as A (the host itself has no entry); its CT entry
    records A. Without the mark the host is denied; with PROXY_EGRESS | A
    (an egress proxy's upstream) it goes to B's ingress proxy."""
    a, b, _c = abc
    topo.serve(b, PORT)
    datapath.maps.endpoints.upsert(b.endpoint(ingress=True))
    datapath.maps.policy.set_endpoint_policy(b.lxc_id, [
        PolicyEntry(a.identity, "ingress", PORT, "TCP", proxy_port=listener.port)])
    dst = addr(b, family)

    def connect(mark: int | None) -> bytes:
        s = socket.socket(socket.AF_INET if family == 4 else socket.AF_INET6, socket.SOCK_STREAM)
        with s:
            s.settimeout(1)
            if mark is not None:
                s.setsockopt(socket.SOL_SOCKET, SO_MARK, mark)
            try:
                s.connect((dst, PORT))
                s.sendall(b"hello")
                return s.recv(100)
            except OSError:
                return b""

    before = drops(datapath, DROP_POLICY, METRIC_INGRESS)
    assert connect(None) == b""
    assert drops(datapath, DROP_POLICY, METRIC_INGRESS) > before
    assert connect(identity_mark(MARK_MAGIC_PROXY_INGRESS, a.identity)) == b"ok:hello"
    assert listener.accepted == []
    router = topo.router4 if family == 4 else topo.router6
    [e] = [e for e in datapath.maps.ct.dump() if e.saddr == router and e.daddr == dst and e.dport == PORT
           and e.direction == CT_INGRESS and not e.flags & CT_F_PROXY_REDIRECT]
    assert e.src_sec_id == a.identity
    assert connect(identity_mark(MARK_MAGIC_PROXY_EGRESS, a.identity)) == b"ok:hello"
    assert len(wait_accepted(listener, 1)) == 1


@FAMILIES
def test_no_listener_drops_178(topo, datapath, abc, proxy_routes, host_dev, family):
    """A proxy port nobody listens on: the SYN is dropped as
    DROP_PROXY_LOOKUP_FAILED (from-container, and from-host after the hairpin),
    never delivered to the server past the proxy."""
    a, b, _c = abc
    topo.serve(b, PORT)
    free = TransparentListener().start()
    port = free.port
    free.close()   # a port just released: no listener
    datapath.maps.endpoints.upsert(b.endpoint(ingress=True))
    datapath.maps.policy.set_endpoint_policy(b.lxc_id, [
        PolicyEntry(a.identity, "ingress", PORT, "TCP", proxy_port=port),
        PolicyEntry(IDENTITY_HOST, "ingress", PORT, "TCP", proxy_port=port)])
    before = (drops(datapath, DROP_PROXY_LOOKUP_FAILED, METRIC_EGRESS),
              drops(datapath, DROP_PROXY_LOOKUP_FAILED, METRIC_INGRESS))
    assert topo.tcp(a, addr(b, family), PORT) == TIMEOUT
    assert topo.tcp(None, addr(b, family), PORT) == TIMEOUT
    assert drops(datapath, DROP_PROXY_LOOKUP_FAILED, METRIC_EGRESS) > before[0]
    assert drops(datapath, DROP_PROXY_LOOKUP_FAILED, METRIC_INGRESS) > before[1]
    # no CT entry was left for the refused SYN from the container
    assert not [e for e in datapath.maps.ct.dump() if e.saddr == addr(a, family) and e.dport == PORT]


def test_proxy_policy_routing_is_idempotent_and_removed():
    """ensure() installs the rule and table 2004's local routes for both
    families once (a second call adds nothing), a TO_PROXY-marked packet to
    any address is then routed locally, and remove() takes back what it
    added. In a namespace of its own: the host's rules are shared (the
    proxy_routes fixture), so there they may be present before and after."""
    ns = f"dcproxyrt-{os.getpid()}"
    sh("ip", "netns", "add", ns)
    try:
        sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
        with NetNS(ns) as ip:
            assert proxyroute.find(ip) == []
            added = proxyroute.ensure(ip=ip)
            assert {(r.kind, r.family) for r in proxyroute.find(ip)} == {
                (k, f) for k in ("rule", "route") for f in proxyroute.FAMILIES}
            assert proxyroute.ensure(ip=ip) == []
            for dst in ("192.0.2.1", "2001:db8::1"):
                get = ("ip", "netns", "exec", ns, "ip", "route", "get", dst, "mark")
                marked = sh(*get, "0x4e200").stdout
                assert marked.startswith(f"local {dst} ") and " dev lo table 2004 " in marked, marked
                assert not sh(*get, "0x4e300", check=False).stdout.startswith("local")
            assert proxyroute.remove(added, ip) == []
            assert proxyroute.find(ip) == []
    finally:
        sh("ip", "netns", "del", ns, check=False)


def test_uplink_mtu_ignores_the_proxy_tables_default_route(proxy_routes):
    """The agent sizes its links by the main table's default route: table
    2004's "local default dev lo" (MTU 65536, more than a veth takes) is
    another default route, listed first."""
    main_default = json.loads(sh("ip", "-j", "-4", "route", "show", "default", "table", "main").stdout)
    want = int(open(f"/sys/class/net/{main_default[0]['dev']}/mtu").read())

    async def mtu() -> int:
        links = LinkManager()
        try:
            return await links.uplink_mtu()
        finally:
            await links.close()

    assert asyncio.run(mtu()) == want != 65536


@FAMILIES
def test_a_syn_the_full_listener_dropped_reaches_it_when_retransmitted(topo, datapath, abc, proxy_routes, family):
    """The proxy's accept queue is full when a connection's first SYN comes:
    the kernel drops that SYN, but its CT entry (marked for the proxy) stays.
    The retransmitted SYN must still go to the listener once there is room,
    not be dropped as 178 because the proxy has no socket of that connection."""
    a, b, _c = abc
    fam = socket.AF_INET if family == 4 else socket.AF_INET6
    ls = socket.socket(fam, socket.SOCK_STREAM)
    try:
        if family == 4:
            ls.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
        else:
            ls.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            ls.setsockopt(socket.IPPROTO_IPV6, IPV6_TRANSPARENT, 1)
        ls.bind(("0.0.0.0" if family == 4 else "::", 0))
        ls.listen(0)  # room for one connection nobody accepted
        ls.settimeout(5)
        datapath.maps.endpoints.upsert(b.endpoint(ingress=True))
        datapath.maps.policy.set_endpoint_policy(b.lxc_id, [
            PolicyEntry(a.identity, "ingress", PORT, "TCP", proxy_port=ls.getsockname()[1])])
        argv = ["ip", "netns", "exec", a.netns, PYTHON, topo.tool, "converse", addr(b, family), str(PORT)]
        first = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        second = None
        try:
            assert first.stdout.readline().strip() == "ready"  # queued: the queue is full now
            second = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            time.sleep(0.5)   # its first SYN came and was dropped by the listener
            c1, _ = ls.accept()
            c2, _ = ls.accept()  # the SYN retransmitted after 1 s
            assert c2.getsockname()[:2] == (addr(b, family), PORT)
            assert second.stdout.readline().strip() == "ready"
            c1.close()
            c2.close()
        finally:
            for p in (first, second):
                if p is not None:
                    p.kill()
                    p.wait()
    finally:
        ls.close()
