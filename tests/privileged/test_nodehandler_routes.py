"""The node handler's real route code (pyroute2, main table) in a throw-away netns.

The handler runs in a child process inside the netns (``ip netns exec``), as
the agent would in its own namespace, with a cilium_host device (dummy, or
a veth where the kernel has no dummy) carrying the router addresses and an
"uplink" with a neighbour's subnet. The test drives it step by step through
stdin and reads the kernel's table from outside with ``ip -n NS route``.
The netns (and with it every link and route) is deleted at the end.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from typing import Iterator

import pytest

from tests.helpers import require_root

# Runs inside the netns. Reads steps ("join", "move", "leave", "quit") from
# stdin, answers each with a "STATUS <json>" line once the handler has settled.
CHILD = r"""
import asyncio, ipaddress, json, sys
from docker_cilium.datapath.nodehandler import LocalNode, NetlinkRoutes, NodeHandler
from docker_cilium.node.types import INTERNAL_IP, Node

class Map(dict):
    def upsert(self, cidr, ep): self[cidr] = ep
    def delete(self, cidr): self.pop(cidr, None)
    def dump(self): return dict(self)

class IPC:
    def upsert_remote(self, ip, identity, ep): pass
    def delete_remote(self, ip): pass

def node(ip):
    return Node(name="node2", addresses=((INTERNAL_IP, ip),), ipv4_alloc_cidr=ipaddress.IPv4Network("10.8.0.0/16"),
                ipv6_alloc_cidr=ipaddress.IPv6Network("f00d::a08:0:0:0/96"), ipv4_health_ip="10.8.0.1")

async def main(mode):
    h = NodeHandler(LocalNode("node1", "10.7.0.1", "f00d::a07:0:0:1", 1350), mode, NetlinkRoutes(),
                    Map({"10.99.0.0/16": "192.168.2.99"}), IPC(), retry_s=0.1)
    await h.start()
    loop = asyncio.get_running_loop()
    current = None
    while True:
        await asyncio.wait_for(h.settled(), 10)
        print("STATUS", json.dumps(h.status()), flush=True)
        step = (await loop.run_in_executor(None, sys.stdin.readline)).strip()
        if step == "join":
            current = node("192.168.2.7"); h.node_joined(current)
        elif step == "move":
            new = node("192.168.2.8"); h.node_updated(current, new); current = new
        elif step == "leave":
            h.node_left(current)
        else:
            break
    await h.close()

asyncio.run(main(sys.argv[1]))
"""


def sh(*args: str, check: bool = True) -> str:
    return subprocess.run(args, check=check, capture_output=True, text=True, timeout=20).stdout


@pytest.fixture
def netns() -> Iterator[str]:
    require_root()
    ns = f"ndh-{uuid.uuid4().hex[:8]}"
    sh("ip", "netns", "add", ns)
    try:
        ipn = ("ip", "-n", ns)
        if subprocess.run([*ipn, "link", "add", "cilium_host", "type", "dummy"], capture_output=True).returncode:
            sh(*ipn, "link", "add", "cilium_host", "type", "veth", "peer", "name", "cilium_net")
            sh(*ipn, "link", "set", "cilium_net", "up")
        sh(*ipn, "link", "set", "cilium_host", "up")
        sh(*ipn, "addr", "add", "10.7.0.1/32", "dev", "cilium_host")
        sh(*ipn, "addr", "add", "f00d::a07:0:0:1/128", "dev", "cilium_host", "nodad")
        sh(*ipn, "link", "add", "uplink", "type", "veth", "peer", "name", "uplinkp")
        sh(*ipn, "link", "set", "uplink", "up")
        sh(*ipn, "link", "set", "uplinkp", "up")
        sh(*ipn, "addr", "add", "192.168.2.1/24", "dev", "uplink")
        # what an earlier run left: node4's range (ours, to be swept) and an admin's route (not ours)
        sh(*ipn, "route", "add", "10.10.0.0/16", "via", "10.7.0.1", "dev", "cilium_host", "proto", "193")
        sh(*ipn, "route", "add", "10.11.0.0/16", "via", "10.7.0.1", "dev", "cilium_host", "proto", "static")
        yield ns
    finally:
        sh("ip", "netns", "del", ns, check=False)


class Child:
    def __init__(self, ns: str, mode: str) -> None:
        env = {**os.environ, "PYTHONPATH": os.getcwd()}
        self.proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", CHILD, mode], env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.status = self._read()

    def _read(self) -> dict:
        assert self.proc.stdout is not None
        while True:  # the handler's log lines go to stdout too
            line = self.proc.stdout.readline()
            assert line, f"handler process ended (rc {self.proc.poll()})"
            if line.startswith("STATUS "):
                return json.loads(line[len("STATUS "):])

    def step(self, what: str) -> dict:
        assert self.proc.stdin is not None
        self.proc.stdin.write(what + "\n")
        self.proc.stdin.flush()
        self.status = self._read()
        return self.status

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.step_quit()

    def step_quit(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("quit\n")
        self.proc.stdin.close()
        self.proc.wait(10)


def routes(ns: str, family: str = "-4") -> list[str]:
    return [line.strip() for line in sh("ip", "-n", ns, family, "route", "show", "table", "main").splitlines()
            if line.startswith(("10.", "f00d::a08"))]


def test_tunnel_mode_routes_join_move_leave_and_the_start_sweep(netns: str) -> None:
    child = Child(netns, "vxlan")
    try:
        # the start sweep: node4's route and tunnel entry went, the admin's route stayed
        assert routes(netns) == ["10.11.0.0/16 via 10.7.0.1 dev cilium_host proto static"]
        assert child.status["tunnel"] == {}
        st = child.step("join")
        assert routes(netns) == ["10.8.0.0/16 via 10.7.0.1 dev cilium_host proto 193 src 10.7.0.1 mtu 1350",
                                 "10.11.0.0/16 via 10.7.0.1 dev cilium_host proto static"]
        assert routes(netns, "-6") == ["f00d::a08:0:0:0/96 dev cilium_host proto 193 metric 1024 mtu 1350 pref medium"]
        assert st["tunnel"] == {"10.8.0.0/16": "192.168.2.7", "f00d::a08:0:0:0/96": "192.168.2.7"}
        st = child.step("move")
        assert st["tunnel"]["10.8.0.0/16"] == "192.168.2.8" and routes(netns)[0].startswith("10.8.0.0/16 via 10.7")
        st = child.step("leave")
        assert routes(netns) == ["10.11.0.0/16 via 10.7.0.1 dev cilium_host proto static"]
        assert routes(netns, "-6") == [] and st["tunnel"] == {} and st["failures"] == 0
    finally:
        child.stop()


def test_direct_routes_without_the_tunnel(netns: str) -> None:
    child = Child(netns, "disabled")
    try:
        child.step("join")
        assert "10.8.0.0/16 via 192.168.2.7 dev uplink proto 193" in routes(netns)
        assert routes(netns, "-6") == []  # node2 has no IPv6 node address: no direct IPv6 route
        child.step("move")
        assert "10.8.0.0/16 via 192.168.2.8 dev uplink proto 193" in routes(netns)
        child.step("leave")
        assert not any(r.startswith("10.8.") for r in routes(netns))
    finally:
        child.stop()
