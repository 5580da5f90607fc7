"""The agent's nat chain on real packets, in private namespaces (no Docker, parallel-safe).

Namespace ``h`` plays the host: a bridge-like link to ``c`` (a container on a
Docker bridge, masqueraded by a rule shaped like Docker's) and an ``lxc``
link to ``e`` (a cilium endpoint, /32 route with the router as source). The
endpoint echoes UDP back with the source address it saw, which is what its
ipcache lookup would use: the bridge container must arrive as itself (world),
a process of ``h`` as the router address (host), and replies must flow.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid

import pytest

PYTHON = sys.executable
ROUTER, ENDPOINT, BRIDGE_GW, BRIDGE_C = "10.9.0.1", "10.9.0.5", "172.30.0.1", "172.30.0.2"
PORT = 7007

ECHO = textwrap.dedent(f"""
    import socket
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", {PORT}))
    while True:
        data, peer = s.recvfrom(512)
        s.sendto(peer[0].encode(), peer)
""")
ASK = textwrap.dedent(f"""
    import socket, sys
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(2)
    for _ in range(3):
        s.sendto(b"who", ("{ENDPOINT}", {PORT}))
        try:
            print(s.recvfrom(512)[0].decode()); sys.exit(0)
        except socket.timeout:
            pass
    sys.exit(1)
""")
ENSURE = textwrap.dedent("""
    import asyncio, sys
    from docker_cilium.datapath.iptables import Iptables
    ipt = Iptables(ipv6=False)
    asyncio.run(ipt.ensure({4: ["10.9.0.0/16"]}) if sys.argv[1] == "ensure" else
                ipt.ensure_nat_first() if sys.argv[1] == "first" else ipt.remove_all())
""")


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    res = subprocess.run(list(args), capture_output=True, text=True, timeout=30)
    if check and res.returncode != 0:
        raise AssertionError(f"{' '.join(args)} -> {res.returncode}: {res.stderr.strip()}")
    return res


@pytest.fixture
def lab():
    sfx = uuid.uuid4().hex[:6]
    h, c, e = f"dcn{sfx}h", f"dcn{sfx}c", f"dcn{sfx}e"
    echo = None
    try:
        for ns in (h, c, e):
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", h, "link", "add", "brdct", "type", "veth", "peer", "name", "eth0", "netns", c)
        sh("ip", "-n", h, "link", "add", "lxcdct", "type", "veth", "peer", "name", "eth0", "netns", e)
        sh("ip", "netns", "exec", h, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        sh("ip", "-n", h, "addr", "add", f"{ROUTER}/32", "dev", "lo")
        sh("ip", "-n", h, "addr", "add", f"{BRIDGE_GW}/24", "dev", "brdct")
        for ns, link in ((h, "brdct"), (h, "lxcdct"), (c, "eth0"), (e, "eth0")):
            sh("ip", "-n", ns, "link", "set", link, "up")
        sh("ip", "-n", h, "route", "add", f"{ENDPOINT}/32", "dev", "lxcdct", "src", ROUTER)
        sh("ip", "-n", c, "addr", "add", f"{BRIDGE_C}/24", "dev", "eth0")
        sh("ip", "-n", c, "route", "add", "default", "via", BRIDGE_GW)
        sh("ip", "-n", e, "addr", "add", f"{ENDPOINT}/32", "dev", "eth0")
        sh("ip", "-n", e, "route", "add", f"{ROUTER}/32", "dev", "eth0")
        sh("ip", "-n", e, "route", "add", "default", "via", ROUTER)
        # Docker's masquerade rule for a bridge, as dockerd writes it.
        sh("ip", "netns", "exec", h, "iptables", "-t", "nat", "-A", "POSTROUTING", "-s", "172.30.0.0/24",
           "!", "-o", "brdct", "-j", "MASQUERADE")
        echo = subprocess.Popen(["ip", "netns", "exec", e, PYTHON, "-c", ECHO])
        yield h, c
    finally:
        if echo is not None:
            echo.kill()
            echo.wait()
        for ns in (h, c, e):
            sh("ip", "netns", "del", ns, check=False)


def seen_source(ns: str) -> str:
    return sh("ip", "netns", "exec", ns, PYTHON, "-c", ASK).stdout.strip()


def agent_iptables(ns: str, action: str) -> None:
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    subprocess.run(["ip", "netns", "exec", ns, PYTHON, "-c", ENSURE, action], check=True, env=env, timeout=60)


def nat_rules(ns: str) -> list[str]:
    return [l for l in sh("ip", "netns", "exec", ns, "iptables", "-t", "nat", "-S").stdout.splitlines()
            if l.startswith(("-A", "-N"))]


def test_bridge_source_kept_host_source_stays_host(lab):
    h, c = lab
    assert seen_source(c) == ROUTER  # Docker's MASQUERADE alone: the container looks like the host
    agent_iptables(h, "ensure")
    assert seen_source(c) == BRIDGE_C  # ... and the echo came back: replies flow without NAT
    assert seen_source(h) == ROUTER  # a host process keeps a host address
    # dockerd (re)creating a bridge inserts its MASQUERADE in front of our jump.
    sh("ip", "netns", "exec", h, "iptables", "-t", "nat", "-I", "POSTROUTING", "-s", "172.31.0.0/24",
       "!", "-o", "brother", "-j", "MASQUERADE")
    agent_iptables(h, "first")
    post = [r for r in nat_rules(h) if r.startswith("-A POSTROUTING")]
    assert post[0] == "-A POSTROUTING -j CILIUM_POST_nat" and post.count(post[0]) == 1, post
    agent_iptables(h, "remove")
    assert [r for r in nat_rules(h) if "CILIUM" in r or "cilium" in r] == []
