"""Containers on Docker's own bridges are `world` to cilium endpoints, not `host`.

Docker masquerades its bridges' traffic to a host address; unless the agent
keeps the bridge's source address, every non-cilium container passes
`fromEntities: host`. A host process must keep the `host` identity.
"""

from __future__ import annotations

import json

import pytest

from tests.e2e.conftest import TEST_LABEL, create_network, exec_, net_settings, run_container
from tests.e2e.test_policy_constructs import HTTPD, host_http
from tests.helpers import docker, run, wait_until


def http(container: str, ip: str) -> bool:
    r = exec_(container, "timeout", "3", "wget", "-q", "-O", "-", f"http://{ip}/", check=False, timeout=20)
    return r.returncode == 0


def nat_jump_first() -> bool:
    rules = [l for l in run("iptables", "-t", "nat", "-S", "POSTROUTING").stdout.splitlines() if l.startswith("-A")]
    return bool(rules) and rules[0] == "-A POSTROUTING -j CILIUM_POST_nat"


@pytest.fixture(scope="module")
def lab(agent, tmp_path_factory):
    import uuid

    sfx = uuid.uuid4().hex[:6]
    net = f"dct-brid-{sfx}"
    create_network(net, "--driver", "cilium", "--ipam-driver", "cilium")
    srv = run_container(f"dct-srv-{sfx}", net, "-l", "app=web", cmd=HTTPD)
    srv_ip = net_settings(srv, net)["IPAddress"]
    # Docker's default bridge, and a bridge network created while the agent runs:
    # Docker then inserts its MASQUERADE rule at the top of POSTROUTING.
    default_bridge = docker("run", "-d", "--name", f"dct-dflt-{sfx}", "--label", TEST_LABEL, "busybox",
                            "sleep", "3600").stdout.strip()
    user_net = f"dct-ubr-{sfx}"
    create_network(user_net)
    user_bridge = run_container(f"dct-ubr-{sfx}", user_net)
    wait_until(nat_jump_first, what="the agent's nat jump back in front of Docker's MASQUERADE")

    def labelled():
        eps = {e["container-name"]: e for e in agent.cli_json("endpoint", "list")}
        ep = eps.get(f"dct-srv-{sfx}")
        return ep and ep["state"] == "ready" and ep["identity"]["id"] >= 256

    wait_until(labelled, what="server endpoint with its identity")
    return srv_ip, {"default bridge": default_bridge, "user bridge": user_bridge}


@pytest.fixture
def policy(agent, tmp_path):
    def _import(entities: list[str]) -> None:
        path = tmp_path / "policy.json"
        path.write_text(json.dumps([{"endpointSelector": {"matchLabels": {"app": "web"}},
                                     "ingress": [{"fromEntities": entities}]}]))
        agent.cli("policy", "import", str(path))
    yield _import
    agent.cli("policy", "delete", "--all")


def test_bridge_containers_reach_endpoint_without_policy(lab):
    """Positive control: the path (and its replies) work before any rule is in place."""
    srv_ip, bridges = lab
    for where, container in bridges.items():
        assert http(container, srv_ip), where
    assert host_http(srv_ip)


def test_from_entities_host_admits_host_not_bridge_containers(lab, policy):
    srv_ip, bridges = lab
    for where, container in bridges.items():  # this test's own positive control for the denial below
        assert http(container, srv_ip), f"a container on the {where} cannot reach the server before the rule"
    policy(["host"])
    assert host_http(srv_ip), "a host process lost the host identity"
    for where, container in bridges.items():
        assert not http(container, srv_ip), f"a container on the {where} passed fromEntities: host"


def test_from_entities_world_admits_bridge_containers_not_host(lab, policy):
    srv_ip, bridges = lab
    assert host_http(srv_ip), "a host process cannot reach the server before the rule"  # control for the denial
    policy(["world"])
    for where, container in bridges.items():
        assert http(container, srv_ip), f"a container on the {where} is not world"
    assert not host_http(srv_ip), "a host process passed fromEntities: world"
