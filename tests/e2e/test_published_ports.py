"""Published ports (`docker run -p`) on cilium-net, with real dockerd, iptables and packets.

The outside machine is a network namespace on a veth beside the host
(``outside_host``: host 198.18.99.1, outside 198.18.99.2); it reaches the
host's address on that link as another machine would reach the uplink's.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import HOST_IF, NS_IF, OUTSIDE_NS, TEST_LABEL, create_network, exec_, net_settings, \
    run_container
from tests.e2e.test_policy_demo import labelled
from tests.helpers import docker, run, wait_until

HTTPD = ("httpd", "-f", "-p", "80", "-h", "/var/www")
HOST_IP = "198.18.99.1"
HOST_IP6, OUTSIDE_IP6 = "fd00:dc99::1", "fd00:dc99::2"
L3_RULE = Path(__file__).parent.parent / "fixtures" / "policies" / "l3-rule.json"
WORLD_RULE = [{"endpointSelector": {"matchLabels": {"id": "app1"}},
               "ingress": [{"fromEntities": ["world"]}]}]
# Dual-stack: one socket on [::] answers IPv4 (mapped) and IPv6.
UDP_ECHO = ("import socket\ns=socket.socket(socket.AF_INET6,socket.SOCK_DGRAM)\ns.bind(('::',53))\n"
            "while True:\n d,a=s.recvfrom(512)\n s.sendto(b'echo:'+d,a)\n")
UDP_ASK = ("import socket,sys\nf=socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET\n"
           "s=socket.socket(f,socket.SOCK_DGRAM)\ns.settimeout(2)\n"
           "s.sendto(b'hi',(sys.argv[1],int(sys.argv[2])))\nprint(s.recvfrom(512)[0].decode())\n")


def url(ip: str, port: int) -> str:
    return f"http://[{ip}]:{port}/" if ":" in ip else f"http://{ip}:{port}/"


def from_outside(ip: str, port: int) -> bool:
    res = run("ip", "netns", "exec", OUTSIDE_NS, "timeout", "3", "busybox", "wget", "-q", "-O", "-", url(ip, port),
              check=False, timeout=20)
    return res.returncode == 0 and "docker-cilium" in res.stdout


def from_host(ip: str, port: int) -> bool:
    res = run("timeout", "3", "busybox", "wget", "-q", "-O", "-", url(ip, port), check=False, timeout=20)
    return res.returncode == 0 and "docker-cilium" in res.stdout


def from_container(container: str, ip: str, port: int) -> bool:
    res = exec_(container, "timeout", "3", "wget", "-q", "-O", "-", url(ip, port), check=False, timeout=20)
    return res.returncode == 0 and "docker-cilium" in res.stdout


def dnat_rules() -> list[str]:
    out = run("iptables-save", "-t", "nat").stdout + run("ip6tables-save", "-t", "nat").stdout
    return [line for line in out.splitlines() if "published port" in line and "DNAT" in line]


@pytest.fixture
def outside6(outside_host):
    """IPv6 on the outside link too."""
    run("ip", "addr", "add", f"{HOST_IP6}/64", "dev", HOST_IF, "nodad")
    run("ip", "netns", "exec", OUTSIDE_NS, "ip", "addr", "add", f"{OUTSIDE_IP6}/64", "dev", NS_IF, "nodad")
    return outside_host


@pytest.fixture
def net(agent, names):
    name = names("ports")
    create_network(name, "--ipv6", "--subnet", "::1/112", "--driver", "cilium", "--ipam-driver", "cilium")
    return name


@pytest.fixture
def policy_cleanup(agent):
    yield
    agent.cli("policy", "delete", "--all", check=False)


def test_published_port_reachable_everywhere_until_removed(agent, names, net, outside6):
    app1 = run_container(names("app1"), net, "-p", "18080:80", cmd=HTTPD)
    other = run_container(names("other"), net)
    wait_until(lambda: from_outside(HOST_IP, 18080), what="outside client reaches -p 18080:80")
    assert from_outside(HOST_IP6, 18080), "IPv6 outside client"
    assert from_host(HOST_IP, 18080) and from_host("127.0.0.1", 18080), "host process (address and loopback)"
    assert from_container(other, HOST_IP, 18080), "another container through the host's address"
    assert from_container(app1, HOST_IP, 18080), "the container itself (hairpin)"
    ip1 = net_settings(app1, net)["IPAddress"]
    assert any(f"{ip1}:80" in r for r in dnat_rules())

    docker("rm", "-f", app1)
    assert not from_outside(HOST_IP, 18080)
    assert not from_host(HOST_IP, 18080)
    assert dnat_rules() == [], "rules left behind after the container went"
    # The host port is free again.
    s = socket.socket()
    try:
        s.bind(("0.0.0.0", 18080))
    finally:
        s.close()


def test_policy_applies_to_published_port(agent, names, net, outside_host, policy_cleanup):
    """The outside client is `world`: an l3 rule allowing only id=app2 denies it;
    `fromEntities: [world]` lets it in."""
    app1 = run_container(names("app1"), net, "-l", "id=app1", "-p", "18081:80", cmd=HTTPD)
    labelled(agent, names("app1"), "container:id=app1")
    wait_until(lambda: from_outside(HOST_IP, 18081), what="open before any policy")
    agent.cli("policy", "import", str(L3_RULE))
    assert not from_outside(HOST_IP, 18081), "l3-rule (only id=app2) must deny the outside client"
    drops = agent.cli_json("endpoint", "list")
    assert drops  # endpoint list still answers
    agent.cli("policy", "delete", "--all")
    rule = Path(agent.workdir) / "world.json"
    rule.write_text(json.dumps(WORLD_RULE))
    agent.cli("policy", "import", str(rule))
    assert from_outside(HOST_IP, 18081), "fromEntities: [world] lets the outside client in"
    assert app1


def test_loopback_binding_is_host_only(agent, names, net, outside_host):
    run_container(names("lo"), net, "-p", "127.0.0.1:18083:80", cmd=HTTPD)
    wait_until(lambda: from_host("127.0.0.1", 18083), what="host reaches 127.0.0.1:18083")
    assert not from_host(HOST_IP, 18083), "bound to 127.0.0.1 only"
    assert not from_outside(HOST_IP, 18083)
    # An outside packet to 127.0.0.1 is not forwarded to the container either.
    run("ip", "netns", "exec", OUTSIDE_NS, "ip", "route", "add", "127.0.0.0/8", "via", HOST_IP, "dev", NS_IF,
        check=False)
    assert not from_outside("127.0.0.1", 18083)


def test_udp_port(agent, names, net, outside6):
    c = run_container(names("udp"), net, "-p", "18053:53/udp")
    pid = docker("inspect", "-f", "{{.State.Pid}}", c).stdout.strip()
    server = subprocess.Popen(["nsenter", "-t", pid, "-n", sys.executable, "-c", UDP_ECHO])
    try:
        def ask(ip: str) -> str:
            return run("ip", "netns", "exec", OUTSIDE_NS, sys.executable, "-c", UDP_ASK, ip, "18053",
                       check=False).stdout.strip()
        wait_until(lambda: ask(HOST_IP) == "echo:hi", what="UDP answer through the published port")
        wait_until(lambda: ask(HOST_IP6) == "echo:hi", what="UDP over IPv6")
    finally:
        server.kill()
        server.wait()


def test_taken_port_fails_docker_run(agent, names, net):
    s = socket.socket()
    s.bind(("0.0.0.0", 18082))
    s.listen()
    try:
        res = docker("run", "-d", "--name", names("taken"), "--label", TEST_LABEL, "--net", net,
                     "-p", "18082:80", "busybox", *HTTPD, check=False)
        assert res.returncode != 0
        assert "18082/tcp" in res.stderr and "already in use" in res.stderr, res.stderr
    finally:
        s.close()
    # A second container asking for a port the first one publishes fails too.
    run_container(names("first"), net, "-p", "18084:80", cmd=HTTPD)
    res = docker("run", "-d", "--name", names("second"), "--label", TEST_LABEL, "--net", net,
                 "-p", "18084:80", "busybox", *HTTPD, check=False)
    assert res.returncode != 0 and "18084/tcp" in res.stderr, res.stderr
    assert all("18084" not in r or "--dport 18084" in r for r in dnat_rules())
    assert sum("--dport 18084" in r for r in dnat_rules()) == 4  # first's: 2 families x PRE/OUTPUT


def test_publish_all_and_ranges(agent, names, net):
    held = socket.socket()
    held.bind(("0.0.0.0", 18090))
    try:
        c = run_container(names("range"), net, "-p", "18090-18092:80", cmd=HTTPD)
        wait_until(lambda: from_host("127.0.0.1", 18091), what="the first free port of the range")
        assert not any("--dport 18090" in r for r in dnat_rules())
    finally:
        held.close()
    docker("rm", "-f", c)
    p = run_container(names("all"), net, "--expose", "80", "-P", cmd=HTTPD)
    ip = net_settings(p, net)["IPAddress"]
    ports = {int(r.split("--dport ")[1].split()[0]) for r in dnat_rules() if f"{ip}:80" in r}
    assert len(ports) == 1, dnat_rules()
    port = ports.pop()
    wait_until(lambda: from_host("127.0.0.1", port), what="-P publishes on a free port")


def test_mappings_survive_agent_restart(agent, names, net, outside_host):
    run_container(names("keep"), net, "-p", "18085:80", cmd=HTTPD)
    wait_until(lambda: from_outside(HOST_IP, 18085), what="published")
    agent.stop()
    assert from_outside(HOST_IP, 18085), "rules stay while the agent is down"
    agent.start()
    assert from_outside(HOST_IP, 18085)
    assert sum("--dport 18085" in r for r in dnat_rules()) == 4, dnat_rules()  # rebuilt, not doubled
    s = socket.socket()
    try:
        with pytest.raises(OSError):
            s.bind(("0.0.0.0", 18085))  # held again by the restarted agent
    finally:
        s.close()


def test_stop_unpublishes_start_publishes_again(agent, names, net):
    c = run_container(names("stopstart"), net, "-p", "18087:80", cmd=HTTPD)
    wait_until(lambda: from_host("127.0.0.1", 18087), what="published")
    docker("stop", "-t", "1", c)
    assert not from_host("127.0.0.1", 18087)
    assert not any("--dport 18087" in r for r in dnat_rules())
    with socket.socket() as s:
        s.bind(("0.0.0.0", 18087))  # released while the container is stopped
    docker("start", c)
    wait_until(lambda: from_host("127.0.0.1", 18087), what="published again after docker start")
