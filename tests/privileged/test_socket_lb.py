"""The socket LB (bpf_src/bpf_sock.c): a HOST process connecting or sending to
a service VIP reaches a backend, and sees only the VIP.

Real kernel: the services are written with LBMap into the maps of a loaded
datapath (private pin root), bpf_sock.o is loaded beside it and attached
through pinned links to a private child cgroup of a cgroup v2 mount; the
clients are host processes moved into that cgroup (other processes of the
machine are not affected), the backends are servers in test namespaces that
answer with their name. The VIPs are blackholed addresses of the test
subnet: a connection that is NOT translated fails instead of reaching anything.
"""

from __future__ import annotations

import ctypes
import json
import os
import random
import subprocess
import time

import pytest

from docker_cilium import defaults
from docker_cilium.datapath.bpf import check, libbpf
from docker_cilium.datapath.loader import compile_datapath
from docker_cilium.datapath.maps.lbmap import L4Addr
from docker_cilium.datapath.maps.socklb import netns_cookie
from docker_cilium.datapath.socketlb import PROGRAMS, SocketLB, detach, ensure_cgroup2, is_cgroup2, link_info
from tests.privileged.conftest import PYTHON

SERVER = r"""
import socket, sys, threading
name, port = sys.argv[1].encode(), int(sys.argv[2])
def tcp(ls):
    while True:
        c, _ = ls.accept()
        try:
            c.settimeout(2); c.sendall(name + b":" + c.recv(100))
        except OSError:
            pass
        finally:
            c.close()
def udp(us):
    while True:
        d, a = us.recvfrom(100); us.sendto(name + b":" + d, a)
for kind, fn in ((socket.SOCK_STREAM, tcp), (socket.SOCK_DGRAM, udp)):
    s = socket.socket(socket.AF_INET6, kind)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("::", port))
    if kind == socket.SOCK_STREAM:
        s.listen(64)
    threading.Thread(target=fn, args=(s,), daemon=True).start()
print("ready", flush=True)
sys.stdin.read()
"""

# n exchanges, each on a new socket: tcp, udp (unconnected sendto/recvfrom) or
# udpc (connected); JSON list of {peer, from, reply} or {error}
CLIENT = r"""
import errno, json, socket, sys
mode, dst, port, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
fam = socket.AF_INET6 if ":" in dst else socket.AF_INET
out = []
for _ in range(n):
    r = {}
    s = socket.socket(fam, socket.SOCK_STREAM if mode == "tcp" else socket.SOCK_DGRAM)
    s.settimeout(1.5)
    try:
        if mode == "udp":
            s.sendto(b"hi", (dst, port))
        else:
            s.connect((dst, port))
            r["peer"] = list(s.getpeername()[:2])
            s.send(b"hi")
        if mode == "tcp":
            r["reply"] = s.recv(100).decode()
        else:
            d, a = s.recvfrom(100)
            r["reply"], r["from"] = d.decode(), list(a[:2])
    except OSError as e:
        r["error"] = errno.errorcode.get(e.errno, "timeout") if e.errno else "timeout"
    finally:
        s.close()
    out.append(r)
print(json.dumps(out))
"""


def _umount(path: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.umount2(path.encode(), 0) != 0:
        raise OSError(ctypes.get_errno(), f"umount {path}")


@pytest.fixture
def cgroup(tmp_path):
    """A child cgroup of a private cgroup v2 mount (removed, and unmounted, after)."""
    mnt = tmp_path / "cgroup2"
    mnt.mkdir()
    assert not is_cgroup2(str(mnt))
    ensure_cgroup2(str(mnt))
    assert is_cgroup2(str(mnt))
    child = mnt / f"dctest-{os.getpid()}-{random.randrange(1 << 30):x}"
    try:
        child.mkdir()
        yield str(child)
    finally:
        for _ in range(50):  # exited clients leave the cgroup asynchronously
            try:
                if child.exists():
                    child.rmdir()
                break
            except OSError:
                time.sleep(0.1)
        _umount(str(mnt))


@pytest.fixture(scope="session")
def sock_object(tmp_path_factory):
    return compile_datapath(out_dir=tmp_path_factory.mktemp("sockobj"), source="bpf_sock.c")


@pytest.fixture
def links_dir(pin_root):
    d = defaults.socketlb_links_dir(defaults.bpf_root_of(pin_root))
    yield d
    detach(d)  # the pin root fixture removes the rest of the test's bpffs dir


@pytest.fixture
def socklb(sock_object, datapath, pin_root, cgroup, links_dir):
    lb = SocketLB.load(sock_object, pin_root)
    try:
        lb.attach(cgroup, links_dir)
        yield lb
    finally:
        lb.close()


def serve(topo, c, port: int) -> None:
    p = subprocess.Popen(["ip", "netns", "exec", c.netns, PYTHON, "-c", SERVER, c.name, str(port)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    c.servers.append(p)
    assert p.stdout.readline().strip() == "ready"


def client(cgroup: str, mode: str, dst: str, port: int, n: int = 1, netns: str | None = None) -> list[dict]:
    """Run CLIENT as a process of ``cgroup`` (in the host netns, or ``netns``)."""
    def join() -> None:
        with open(os.path.join(cgroup, "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))
    pre = ["ip", "netns", "exec", netns] if netns else []
    res = subprocess.run(pre + [PYTHON, "-c", CLIENT, mode, dst, str(port), str(n)], capture_output=True,
                         text=True, timeout=60, preexec_fn=join)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def replies(results: list[dict]) -> set[str]:
    assert all("error" not in r for r in results), results
    return {r["reply"].split(":")[0] for r in results}


@pytest.fixture
def svc(topo, datapath, abc):
    """VIPs (v4, v6) blackholed on the host; backends a and b serve port 8080."""
    a, b, _c = abc
    for c in (a, b):
        serve(topo, c, 8080)
    vip4, vip6 = topo.blackhole(50)
    return datapath.maps.lb, vip4, vip6, a, b


def test_tcp_v4_balanced_and_peer_is_vip(socklb, cgroup, svc):
    lb, vip4, _vip6, a, b = svc
    assert client(cgroup, "tcp", vip4, 80)[0]["error"] in ("EINVAL", "ENETUNREACH", "timeout")  # no service yet
    lb.upsert_service(1, L4Addr(vip4, 80), [(1, L4Addr(a.ipv4, 8080)), (2, L4Addr(b.ipv4, 8080))])
    results = client(cgroup, "tcp", vip4, 80, n=24)
    assert replies(results) == {"a", "b"}
    assert {tuple(r["peer"]) for r in results} == {(vip4, 80)}


def test_udp_v4_reply_source_is_vip(socklb, cgroup, svc):
    lb, vip4, _vip6, a, b = svc
    lb.upsert_service(2, L4Addr(vip4, 53, "UDP"), [(1, L4Addr(a.ipv4, 8080, "UDP")),
                                                   (2, L4Addr(b.ipv4, 8080, "UDP"))])
    for mode in ("udp", "udpc"):
        results = client(cgroup, mode, vip4, 53, n=12)
        assert replies(results) == {"a", "b"}, mode
        assert {tuple(r["from"]) for r in results} == {(vip4, 53)}, mode
    assert {tuple(r["peer"]) for r in client(cgroup, "udpc", vip4, 53, n=4)} == {(vip4, 53)}
    # TCP on the same VIP:port is another service (none here)
    assert "error" in client(cgroup, "tcp", vip4, 53)[0]


def test_ipv6_tcp_and_udp(socklb, cgroup, svc):
    lb, _vip4, vip6, a, b = svc
    lb.upsert_service(3, L4Addr(vip6, 80), [(3, L4Addr(a.ipv6, 8080)), (4, L4Addr(b.ipv6, 8080))])
    lb.upsert_service(4, L4Addr(vip6, 53, "UDP"), [(5, L4Addr(a.ipv6, 8080, "UDP")),
                                                   (6, L4Addr(b.ipv6, 8080, "UDP"))])
    tcp = client(cgroup, "tcp", vip6, 80, n=24)
    assert replies(tcp) == {"a", "b"} and {tuple(r["peer"]) for r in tcp} == {(vip6, 80)}
    for mode in ("udp", "udpc"):
        udp = client(cgroup, mode, vip6, 53, n=12)
        assert replies(udp) == {"a", "b"} and {tuple(r["from"]) for r in udp} == {(vip6, 53)}, mode


def test_v4_mapped_address_on_ipv6_socket(socklb, cgroup, svc):
    lb, vip4, _vip6, a, _b = svc
    lb.upsert_service(5, L4Addr(vip4, 80), [(1, L4Addr(a.ipv4, 8080))])
    lb.upsert_service(6, L4Addr(vip4, 53, "UDP"), [(2, L4Addr(a.ipv4, 8080, "UDP"))])
    mapped = f"::ffff:{vip4}"
    tcp = client(cgroup, "tcp", mapped, 80, n=2)
    assert replies(tcp) == {"a"} and {tuple(r["peer"]) for r in tcp} == {(mapped, 80)}
    udp = client(cgroup, "udp", mapped, 53, n=2)
    assert replies(udp) == {"a"} and {tuple(r["from"]) for r in udp} == {(mapped, 53)}


def test_backend_removal_and_no_backend(socklb, cgroup, svc):
    lb, vip4, vip6, a, b = svc
    fe = L4Addr(vip4, 80)
    lb.upsert_service(7, fe, [(1, L4Addr(a.ipv4, 8080)), (2, L4Addr(b.ipv4, 8080))])
    assert replies(client(cgroup, "tcp", vip4, 80, n=16)) == {"a", "b"}
    lb.upsert_service(7, fe, [(2, L4Addr(b.ipv4, 8080))])
    assert replies(client(cgroup, "tcp", vip4, 80, n=16)) == {"b"}
    lb.upsert_service(7, fe, [])
    lb.upsert_service(8, L4Addr(vip4, 53, "UDP"), [])
    lb.upsert_service(9, L4Addr(vip6, 80), [])
    assert [r["error"] for r in client(cgroup, "tcp", vip4, 80, n=2)] == ["EHOSTUNREACH"] * 2
    assert [r["error"] for r in client(cgroup, "udp", vip4, 53)] == ["EHOSTUNREACH"]
    assert [r["error"] for r in client(cgroup, "tcp", vip6, 80)] == ["EHOSTUNREACH"]
    assert lb.delete_service(7, fe)
    assert client(cgroup, "tcp", vip4, 80)[0]["error"] != "EHOSTUNREACH"  # no service: untouched


def test_only_the_host_netns_is_translated(topo, socklb, cgroup, svc):
    """A process of another netns in the same cgroup is left alone (containers
    are the tc datapath's), until that netns is the one configured."""
    lb, vip4, _vip6, a, _b = svc
    lb.upsert_service(10, L4Addr(vip4, 80), [(1, L4Addr(a.ipv4, 8080))])
    d = topo.add_container("d", 6, 14, 1004)  # not an endpoint: no tc program on its veth
    topo.wait_ready()
    assert replies(client(cgroup, "tcp", a.ipv4, 8080, netns=d.netns)) == {"a"}
    assert client(cgroup, "tcp", vip4, 80, netns=d.netns)[0]["error"] == "timeout"
    assert replies(client(cgroup, "tcp", vip4, 80)) == {"a"}

    d_cookie = int(subprocess.run(["ip", "netns", "exec", d.netns, PYTHON, "-c",
                                   "from docker_cilium.datapath.maps.socklb import netns_cookie; "
                                   "print(netns_cookie())"], capture_output=True, text=True,
                                  check=True).stdout)
    assert d_cookie != netns_cookie()
    socklb.maps.set_hostns(d_cookie)
    assert replies(client(cgroup, "tcp", vip4, 80, netns=d.netns)) == {"a"}
    assert "error" in client(cgroup, "tcp", vip4, 80)[0]
    socklb.maps.set_hostns(0)
    assert "error" in client(cgroup, "tcp", vip4, 80)[0]


def test_pinned_links_outlive_the_loader_and_are_updated_in_place(sock_object, pin_root, socklb, cgroup,
                                                                    links_dir, svc):
    lb, vip4, _vip6, a, _b = svc
    lb.upsert_service(11, L4Addr(vip4, 80), [(1, L4Addr(a.ipv4, 8080))])
    assert sorted(os.listdir(links_dir)) == sorted(PROGRAMS)

    def infos():
        out = {}
        for name in PROGRAMS:
            path = os.path.join(links_dir, name)
            fd = check(libbpf().bpf_obj_get(path.encode()), path)
            try:
                out[name] = link_info(fd)
            finally:
                os.close(fd)
        return out

    before = infos()
    assert {i.cgroup_id for i in before.values()} == {os.stat(cgroup).st_ino}
    socklb.close()  # the "agent" is gone: the pinned links keep translating
    assert replies(client(cgroup, "tcp", vip4, 80)) == {"a"}

    again = SocketLB.load(sock_object, pin_root)  # a restarted agent
    try:
        again.attach(cgroup, links_dir)
    finally:
        again.close()
    after = infos()
    assert {n: i.id for n, i in after.items()} == {n: i.id for n, i in before.items()}  # same links
    assert all(after[n].prog_id != before[n].prog_id for n in PROGRAMS)               # new programs
    assert replies(client(cgroup, "tcp", vip4, 80)) == {"a"}

    assert sorted(os.path.basename(p) for p in detach(links_dir)) == sorted(PROGRAMS)
    assert not os.path.exists(links_dir)
    assert client(cgroup, "tcp", vip4, 80)[0]["error"] in ("EINVAL", "ENETUNREACH", "timeout")


def test_cilium_cleanup_detaches_the_hooks(pin_root, socklb, cgroup, links_dir, svc):
    """`cilium cleanup`'s find/remove take the socket LB's links and maps; the
    hooks are gone with the pins. Only this test's bpffs dir is touched."""
    from docker_cilium.datapath import cleanup as host
    from docker_cilium.datapath.maps.socklb import MAP_TYPES

    lb, vip4, _vip6, a, _b = svc
    lb.upsert_service(12, L4Addr(vip4, 80), [(1, L4Addr(a.ipv4, 8080))])
    assert replies(client(cgroup, "tcp", vip4, 80)) == {"a"}
    base = defaults.bpf_root_of(pin_root)
    traces = host.find(base)
    mine = [p for p in traces.pins if p.startswith(base + "/")]
    assert {os.path.join(links_dir, n) for n in PROGRAMS} | {os.path.join(pin_root, n) for n in MAP_TYPES} <= set(mine)
    done, errors = host.remove(host.HostTraces(pins=mine, pin_dirs=traces.pin_dirs))
    assert errors == [] and not os.path.exists(links_dir)
    assert client(cgroup, "tcp", vip4, 80)[0]["error"] in ("EINVAL", "ENETUNREACH", "timeout")
