"""Every policy construct, enforced on real packets between real containers.

One lab (a dual-stack cilium network and a handful of labelled containers) is
shared by the module; each test imports its policy, checks who reaches whom,
and deletes every rule again.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from dataclasses import dataclass

import pytest

from tests.e2e.conftest import NS_IPS, create_network, exec_, net_settings, run_container
from tests.helpers import docker, run, wait_until

HTTPD = ("sh", "-c", "httpd -p 8080 -h /var/www; exec httpd -f -p 80 -h /var/www")
UDP_PORT = 5353

UDP_ECHO = textwrap.dedent("""
    import socket, sys
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", int(sys.argv[1])))
    while True:
        data, peer = s.recvfrom(2048)
        s.sendto(data, peer)
""")
UDP_PING = textwrap.dedent("""
    import socket, sys
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(1.5)
    s.sendto(b"ping", (sys.argv[1], int(sys.argv[2])))
    try:
        sys.exit(0 if s.recvfrom(2048)[0] == b"ping" else 1)
    except socket.timeout:
        sys.exit(1)
""")


@dataclass
class Box:
    name: str
    cid: str
    ip: str
    ip6: str
    pid: int
    endpoint: int


def pid_of(container: str) -> int:
    return int(docker("inspect", "-f", "{{.State.Pid}}", container).stdout.strip())


@pytest.fixture(scope="module")
def lab(agent, tmp_path_factory):
    import uuid

    sfx = uuid.uuid4().hex[:6]
    net = f"dct-lab-{sfx}"
    create_network(net, "--ipv6", "--subnet", "::1/112", "--driver", "cilium", "--ipam-driver", "cilium")
    specs = {
        "srv": (["-l", "app=web", "-l", "env=prod"], HTTPD),
        "prod": (["-l", "app=client", "-l", "env=prod"], ("sleep", "3600")),
        "dev": (["-l", "app=client", "-l", "env=dev"], ("sleep", "3600")),
        "plain": ([], ("sleep", "3600")),
        "restricted": (["-l", "role=restricted"], ("sleep", "3600")),
    }
    boxes: dict[str, Box] = {}
    for name, (labels, cmd) in specs.items():
        cname = f"dct-{name}-{sfx}"
        cid = run_container(cname, net, *labels, cmd=cmd)
        s = net_settings(cid, net)
        boxes[name] = Box(cname, cid, s["IPAddress"], s["GlobalIPv6Address"], pid_of(cid), 0)

    def all_labelled():
        eps = {e["container-name"]: e for e in agent.cli_json("endpoint", "list")}
        ok = all(b.name in eps and eps[b.name]["state"] == "ready" for b in boxes.values())
        ok = ok and all(eps[boxes[n].name]["identity"]["id"] >= 256 for n in ("srv", "prod", "dev", "restricted"))
        return eps if ok else None

    eps = wait_until(all_labelled, what="lab endpoints with identities")
    for b in boxes.values():
        b.endpoint = eps[b.name]["id"]
    echo = subprocess.Popen(["nsenter", "-t", str(boxes["srv"].pid), "-n", sys.executable, "-c", UDP_ECHO,
                             str(UDP_PORT)])
    try:
        yield boxes
    finally:
        echo.kill()
        echo.wait()


@pytest.fixture
def policy(agent, tmp_path):
    """Import a policy (JSON-able), always deleting every rule afterwards."""
    def _import(rules) -> int:
        path = tmp_path / "policy.json"
        path.write_text(json.dumps(rules))
        out = agent.cli("policy", "import", str(path)).stdout
        return int(out.split()[-1])
    yield _import
    agent.cli("policy", "delete", "--all")
    agent.cli("config", "PolicyEnforcement=default")


def http(src: Box, dst_ip: str, port: int = 80) -> bool:
    host = f"[{dst_ip}]" if ":" in dst_ip else dst_ip
    r = exec_(src.cid, "timeout", "3", "wget", "-q", "-O", "-", f"http://{host}:{port}/", check=False, timeout=20)
    return r.returncode == 0


def ping(src: Box, ip: str) -> bool:
    return exec_(src.cid, "ping6" if ":" in ip else "ping", "-c", "1", "-W", "1", ip, check=False).returncode == 0


def udp(src: Box, ip: str, port: int = UDP_PORT) -> bool:
    r = run("nsenter", "-t", str(src.pid), "-n", sys.executable, "-c", UDP_PING, ip, str(port), check=False)
    return r.returncode == 0


def host_http(ip: str) -> bool:
    return run("timeout", "3", "/bin/busybox", "wget", "-q", "-O", "-", f"http://{ip}/", check=False).returncode == 0


def web_ingress(*entries) -> list:
    return [{"endpointSelector": {"matchLabels": {"app": "web"}}, "ingress": list(entries),
             "labels": [{"key": "test", "value": "constructs"}]}]


def test_match_labels_with_and_without_source(lab, policy, agent):
    srv = lab["srv"]
    policy([{"endpointSelector": {"matchLabels": {"container:app": "web"}},
             "ingress": [{"fromEndpoints": [{"matchLabels": {"env": "prod", "any:app": "client"}}]}]}])
    assert http(lab["prod"], srv.ip) and ping(lab["prod"], srv.ip) and http(lab["prod"], srv.ip6)
    assert not http(lab["dev"], srv.ip) and not ping(lab["dev"], srv.ip)
    assert not http(lab["plain"], srv.ip)
    # A source that doesn't match (k8s:) selects nobody.
    agent.cli("policy", "delete", "--all")
    policy([{"endpointSelector": {"matchLabels": {"app": "web"}},
             "ingress": [{"fromEndpoints": [{"matchLabels": {"k8s:env": "prod"}}]}]}])
    assert not http(lab["prod"], srv.ip)


@pytest.mark.parametrize("expr,allowed,denied", [
    ({"key": "env", "operator": "In", "values": ["prod", "staging"]}, ["prod"], ["dev", "plain"]),
    ({"key": "env", "operator": "NotIn", "values": ["dev"]}, ["prod", "plain"], ["dev"]),
    ({"key": "env", "operator": "Exists"}, ["prod", "dev"], ["plain"]),
    ({"key": "env", "operator": "DoesNotExist"}, ["plain"], ["prod", "dev"]),
])
def test_match_expressions(lab, policy, expr, allowed, denied):
    policy(web_ingress({"fromEndpoints": [{"matchExpressions": [expr]}]}))
    for name in allowed:
        assert http(lab[name], lab["srv"].ip), f"{name} should reach srv under {expr}"
    for name in denied:
        assert not http(lab[name], lab["srv"].ip), f"{name} should NOT reach srv under {expr}"


def test_from_requires(lab, policy):
    srv = lab["srv"]
    policy(web_ingress({"fromEndpoints": [{}]}))
    assert http(lab["dev"], srv.ip) and http(lab["prod"], srv.ip)
    policy([{"endpointSelector": {"matchLabels": {"env": "prod"}},
             "ingress": [{"fromRequires": [{"matchLabels": {"env": "prod"}}]}]}])
    assert http(lab["prod"], srv.ip)
    assert not http(lab["dev"], srv.ip)
    assert not http(lab["plain"], srv.ip)


def test_l4_tcp_and_udp_and_icmp(lab, policy):
    srv = lab["srv"]
    assert udp(lab["dev"], srv.ip)
    policy(web_ingress({"fromEndpoints": [{"matchLabels": {"env": "prod"}}],
                        "toPorts": [{"ports": [{"port": str(UDP_PORT), "protocol": "UDP"},
                                               {"port": "80", "protocol": "TCP"}]}]}))
    assert udp(lab["prod"], srv.ip) and http(lab["prod"], srv.ip)
    assert not http(lab["prod"], srv.ip, 8080)
    assert not ping(lab["prod"], srv.ip)  # L4 rules: ICMP is not a port
    assert not udp(lab["dev"], srv.ip) and not http(lab["dev"], srv.ip)
    # ANY opens TCP and UDP on that port for any peer.
    policy(web_ingress({"toPorts": [{"ports": [{"port": "8080", "protocol": "ANY"}]}]}))
    assert http(lab["dev"], srv.ip, 8080)


def test_entities_host_and_world_and_cidr_except(lab, policy, outside_host):
    srv, prod = lab["srv"], lab["prod"]
    inside, excepted = NS_IPS
    assert host_http(srv.ip)
    policy(web_ingress({"fromEntities": ["host"]}))
    assert host_http(srv.ip)
    assert not http(prod, srv.ip)
    policy([{"endpointSelector": {"matchLabels": {"env": "prod", "app": "client"}},
             "egress": [{"toCIDRSet": [{"cidr": "198.18.99.0/29", "except": [f"{excepted}/32"]}]}]}])
    assert ping(prod, inside)
    assert not ping(prod, excepted)
    assert not ping(prod, lab["dev"].ip)  # egress is default-deny now; endpoints are not CIDR peers


def test_entity_world(lab, policy, agent, outside_host):
    prod = lab["prod"]
    inside, excepted = NS_IPS
    policy([{"endpointSelector": {"matchLabels": {"env": "prod", "app": "client"}},
             "egress": [{"toEntities": ["world"]}]}])
    assert ping(prod, inside) and ping(prod, excepted)
    assert not ping(prod, lab["dev"].ip)


def test_egress_default_deny_example(lab, policy):
    with open("tests/fixtures/cilium-examples/policies/l3/egress-default-deny/egress-default-deny.json") as f:
        policy(json.load(f))
    assert not ping(lab["restricted"], lab["srv"].ip)
    assert not http(lab["restricted"], lab["srv"].ip)
    assert ping(lab["dev"], lab["srv"].ip)
    # Ingress to the restricted endpoint is untouched.
    assert ping(lab["dev"], lab["restricted"].ip)


def test_enforcement_modes(lab, policy, agent):
    dev, prod = lab["dev"], lab["prod"]
    assert ping(dev, prod.ip)
    agent.cli("config", "PolicyEnforcement=always")
    assert not ping(dev, prod.ip)
    agent.cli("config", "PolicyEnforcement=default")
    assert ping(dev, prod.ip)
    policy(web_ingress({"fromEndpoints": [{"matchLabels": {"env": "prod"}}]}))
    assert not http(dev, lab["srv"].ip)
    agent.cli("config", "PolicyEnforcement=never")
    assert http(dev, lab["srv"].ip)
    agent.cli("config", "PolicyEnforcement=default")
    # Per endpoint.
    agent.cli("endpoint", "config", str(prod.endpoint), "PolicyEnforcement=always")
    try:
        assert not ping(dev, prod.ip)
        assert ping(prod, lab["plain"].ip) is False  # egress denied too
    finally:
        agent.cli("endpoint", "config", str(prod.endpoint), "PolicyEnforcement=default")
    assert ping(dev, prod.ip)


def test_label_change_moves_identity(lab, policy, agent):
    dev, srv = lab["dev"], lab["srv"]
    policy(web_ingress({"fromEndpoints": [{"matchLabels": {"env": "prod"}}]}))
    assert not http(dev, srv.ip)
    before = agent.cli_json("endpoint", "get", str(dev.endpoint))["identity"]["id"]
    agent.cli("endpoint", "labels", str(dev.endpoint), "--add", "container:env=prod",
              "--delete", "container:env=dev")
    try:
        after = agent.cli_json("endpoint", "get", str(dev.endpoint))["identity"]["id"]
        assert after != before
        assert after == agent.cli_json("endpoint", "get", str(lab["prod"].endpoint))["identity"]["id"]
        assert http(dev, srv.ip)
    finally:
        agent.cli("endpoint", "labels", str(dev.endpoint), "--add", "container:env=dev",
                  "--delete", "container:env=prod")
    assert not http(dev, srv.ip)
