"""Agent lifecycle with real processes: kill -9 inside CreateEndpoint and
RequestAddress, reconciliation with a real dockerd (also one that is not
reachable at first), bad records in the store, one agent at a time.

The agent crashes where a test asks through ``CILIUM_TEST_CRASH_AT``
(``docker_cilium.faults``): SIGKILL from inside, at the exact point.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import signal
import socket
import subprocess
import threading
import time
import uuid

import pytest
from pyroute2 import IPRoute

from docker_cilium import defaults
from docker_cilium.datapath.maps.registry import DatapathMaps
from docker_cilium.endpoint.model import Endpoint, State
from docker_cilium.faults import ENV as CRASH_AT
from docker_cilium.identity import reserved
from docker_cilium.kvstore import keys
from docker_cilium.kvstore.sqlite import SQLiteBackend
from tests.e2e.conftest import (
    TEST_LABEL,
    cleanup_bpf,
    cleanup_docker,
    cleanup_host,
    create_network,
    host_leaks,
    iptables_leaks,
    net_settings,
)
from tests.helpers import DOCKER, Agent, docker, wait_until


@pytest.fixture
def agents(dockerd, tmp_path):
    """Agents made by the test (restartable); the host is cleaned whatever happens."""
    made: list[Agent] = []

    def make(name: str = "agent", **kw) -> Agent:
        # The directory also names its private bpffs dir, so it is unique; it
        # stays short because the API socket inside it must fit sun_path.
        a = Agent(tmp_path / f"{name}-{uuid.uuid4().hex[:8]}", **kw)
        made.append(a)
        return a

    cleanup_host()
    try:
        yield make
    finally:
        cleanup_docker()
        for a in made:
            a.stop()
        cleanup_host()
        for a in made:
            cleanup_bpf(a.bpf_root)
    assert iptables_leaks() == [], "agent cleanup left iptables rules behind"


def node_ranges(agent: Agent) -> list:
    st = agent.cli_json("status")["ipam"]
    return [ipaddress.ip_network(st[f].rsplit(" ", 1)[1]) for f in ("ipv4", "ipv6")]


def ipam_allocations(agent: Agent) -> dict[str, dict]:
    """The agent's address records, read from its store as a second process may."""
    async def read() -> dict[str, dict]:
        store = SQLiteBackend(str(agent.lib_dir / "node-state.db"))
        await store.connect()
        try:
            raw = await store.get_prefix(keys.IPAM)
        finally:
            await store.close()
        return {k[len(keys.IPAM):]: json.loads(v) for k, v in raw.items()}
    return asyncio.run(read())


def orphans(agent: Agent) -> list[str]:
    """Kernel state of endpoints the agent does not know: links, routes, map entries, addresses."""
    eps = agent.cli_json("endpoint", "list")
    names = {e["interface-name"] for e in eps}
    ifindexes = {e["interface-index"] for e in eps}
    addrs = {a for e in eps for a in e["addressing"].values() if a}
    ids = {e["id"] for e in eps}
    ranges = node_ranges(agent)
    out = []
    with IPRoute() as ip:
        veths = {l["index"]: l.get("ifname") for l in ip.get_links() if (l.get("ifname") or "").startswith("lxc")}
        out += [f"link {name}" for name in veths.values() if name not in names]
        for family, plen in ((2, 32), (10, 128)):
            for r in ip.get_routes(family=family, table=254):
                dst = r.get_attr("RTA_DST")
                if r["dst_len"] == plen and dst and any(ipaddress.ip_address(dst) in n for n in ranges
                                                        if n.version == ipaddress.ip_address(dst).version):
                    if r.get_attr("RTA_OIF") in veths and r.get_attr("RTA_OIF") not in ifindexes:
                        out.append(f"route {dst}/{plen}")
    maps = DatapathMaps.open(defaults.bpf_pin_root(agent.bpf_root))
    try:
        out += [f"cilium_ep_ifindex {i.ifindex}" for i in maps.endpoints.dump() if i.ifindex not in ifindexes]
        out += [f"cilium_lxc {a}" for a in maps.endpoints.addresses() if a not in addrs]
        out += [f"cilium_policy lxc_id {s.lxc_id}" for s in maps.policy.dump(include_markers=True)
                if s.lxc_id not in ids]
        for prefix, entry in maps.ipcache.dump().items():
            net = ipaddress.ip_network(prefix)
            if (net.prefixlen == net.max_prefixlen and any(net.subnet_of(r) for r in ranges if r.version == net.version)
                    and str(net.network_address) not in addrs and entry.identity != reserved.HOST):
                out.append(f"cilium_ipcache {prefix}")
    finally:
        maps.close()
    out += [f"ipam {ip}" for ip in ipam_allocations(agent) if ip not in addrs]
    return out


def docker_run_async(name: str, net: str) -> subprocess.Popen:
    return subprocess.Popen([DOCKER, "run", "-d", "--name", name, "--label", TEST_LABEL, "--net", net,
                             "busybox", "sleep", "3600"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run_into_crash(a: Agent, point: str, name: str, net: str):
    """Restart ``a`` armed to SIGKILL itself at ``point``, start a container
    that drives it there, and wait for the kill; returns the docker run."""
    a.stop()
    a.env = {CRASH_AT: point}
    a.start()
    run = docker_run_async(name, net)
    a.proc.wait(timeout=60)
    assert a.proc.returncode == -signal.SIGKILL, a.log()
    return run


def test_kill9_inside_create_endpoint_leaves_no_orphan(agents, names):
    a = agents()
    a.start()
    net = names("crash")
    create_network(net, "--ipv6", "--subnet", "::1/112", "--driver", "cilium", "--ipam-driver", "cilium")
    run = run_into_crash(a, "endpoint-create-before-save", names("c"), net)
    # Killed after the veth, routes and map entries, before the endpoint was saved.
    with IPRoute() as ip:
        assert [l for l in ip.get_links() if (l.get("ifname") or "").startswith("lxc")], "crash point not reached"

    a.env = {}
    a.start()
    out, err = run.communicate(timeout=120)
    # dockerd retries the call for a while: it lands on the restarted agent or gives up.
    eps = a.cli_json("endpoint", "list")
    assert len(eps) == (1 if run.returncode == 0 else 0), (out, err, eps)
    assert orphans(a) == []
    if run.returncode == 0:
        c = out.strip()
        assert net_settings(c, net)["IPAddress"] == eps[0]["addressing"]["ipv4"]
        docker("rm", "-f", c)
    docker("network", "rm", net)
    assert a.cli_json("endpoint", "list") == [] and orphans(a) == [] and host_leaks() == []


class UnixProxy:
    """dockerd's API socket at another path, served only while started."""

    def __init__(self, path: str, target: str = defaults.DOCKER_SOCKET) -> None:
        self.path, self.target = path, target
        self.conns: list[socket.socket] = []
        self.listener: socket.socket | None = None

    def start(self) -> None:
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(self.path)
        self.listener.listen(16)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        assert self.listener is not None
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            upstream.connect(self.target)
            self.conns += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def stop(self) -> None:
        for s in [self.listener, *self.conns]:
            if s is not None:
                s.close()
        if os.path.exists(self.path):
            os.unlink(self.path)


def test_address_dockerd_never_got_is_released_once_dockerd_answers(agents, names, tmp_path):
    a = agents()
    a.start()
    net = names("reconcile")
    create_network(net, "--driver", "cilium", "--ipam-driver", "cilium")
    kept = docker("run", "-d", "--name", names("kept"), "--label", TEST_LABEL, "--net", net,
                  "busybox", "sleep", "3600").stdout.strip()
    run = run_into_crash(a, "ipam-allocate-before-reply", names("lost"), net)
    lost = set(ipam_allocations(a)) - {net_settings(kept, net)["IPAddress"]}
    assert len(lost) == 1, "the address written before the crash"

    # Restarted while dockerd cannot be reached: nothing may be released.
    proxy = UnixProxy(str(tmp_path / "docker.sock"))
    a.env = {}
    a.extra = ["--docker-socket", proxy.path, "--docker-reconcile-grace", "1"]
    a.start()
    out, err = run.communicate(timeout=120)
    known = {net_settings(kept, net)["IPAddress"]}
    if run.returncode == 0:  # dockerd's retry got a fresh address from the restarted agent
        known.add(net_settings(out.strip(), net)["IPAddress"])
    time.sleep(4)
    assert lost <= set(ipam_allocations(a)), "released without dockerd's view"
    try:
        proxy.start()
        wait_until(lambda: set(ipam_allocations(a)) == known, timeout=40, what="the lost address released")
        assert orphans(a) == []
    finally:
        proxy.stop()
    assert "docker.reconcile" in a.log()


def _put_records(lib_dir, records: dict[str, bytes]) -> None:
    async def put() -> None:
        lib_dir.mkdir(parents=True, mode=0o700, exist_ok=True)
        store = SQLiteBackend(str(lib_dir / "node-state.db"))
        await store.connect()
        try:
            for key, value in records.items():
                await store.put(key, value)
        finally:
            await store.close()
    asyncio.run(put())


def test_bad_records_are_reported_and_the_rest_restores(agents, tmp_path):
    a = agents(plugin_socket=str(tmp_path / "plugin.sock"))
    good_net, bad_net = "a" * 64, "b" * 64
    good_ep = Endpoint(id=7, docker_endpoint_id="e" * 64, docker_network_id=good_net, ifname="lxcdoesnotexist",
                       ifindex=1000, peer_ifname="tmp7", mac="02:00:00:00:00:07", host_mac="02:00:00:00:00:70",
                       ipv4="10.250.0.7", state=State.READY)
    _put_records(a.lib_dir, {
        keys.NETWORKS + good_net: json.dumps({"id": good_net, "ipv6": False, "cilium_ipam": True}).encode(),
        # Docker-IPAM network whose gateway cannot be put on cilium_host.
        keys.NETWORKS + bad_net: json.dumps({"id": bad_net, "ipv6": False, "cilium_ipam": False,
                                             "gateway4": "10.300.0.1"}).encode(),
        keys.ENDPOINTS + "x" * 64: b'{"id": 9, "truncated',
        keys.ENDPOINTS + good_ep.docker_endpoint_id: json.dumps(good_ep.to_record()).encode(),
    })
    a.start()
    st = a.cli_json("status")["cilium"]
    assert st["state"] == "Warning"
    assert keys.NETWORKS + bad_net in st["msg"] and keys.ENDPOINTS + "x" * 64 in st["msg"]
    eps = a.cli_json("endpoint", "list")
    assert [(e["id"], e["state"]) for e in eps] == [(7, "not-ready")]
    assert "agent.started" in a.log()


def test_second_agent_refuses_and_first_keeps_serving(agents, tmp_path):
    plugin = str(tmp_path / "plugin.sock")
    first = agents(plugin_socket=plugin)
    first.start()
    # The same state directories: the lock.
    same = subprocess.run(first.argv, capture_output=True, text=True, timeout=30)
    assert same.returncode != 0
    assert f"another cilium-agent (pid {first.proc.pid})" in same.stdout + same.stderr
    # Other directories, the same sockets: refused before anything is touched.
    other = agents("other", plugin_socket=plugin)
    other.api_socket = first.api_socket
    res = subprocess.run(other.argv, capture_output=True, text=True, timeout=30)
    assert res.returncode != 0
    assert "is served by another process" in res.stdout + res.stderr
    assert not os.path.exists(other.bpf_root), "the refused agent touched BPF"
    # The first one still answers on both sockets.
    assert first.cli_json("status")["cilium"]["state"] == "Ok"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(plugin)
        s.sendall(b"POST /Plugin.Activate HTTP/1.0\r\nContent-Length: 2\r\n\r\n{}")
        reply = s.recv(4096).decode()
    assert " 200 " in reply.splitlines()[0] and "NetworkDriver" in reply
    assert first.proc.poll() is None
