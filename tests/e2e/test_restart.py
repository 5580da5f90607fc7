"""kill -9 the agent with containers running: traffic flows, state comes back."""

from __future__ import annotations

import json

from tests.e2e.conftest import create_network, exec_, host_leaks, net_settings, run_container
from tests.helpers import docker


def test_kill9_agent_restores_everything(agent, names):
    net = names("restart")
    create_network(net, "--ipv6", "--subnet", "::1/112", "--driver", "cilium", "--ipam-driver", "cilium")
    a = run_container(names("a"), net, "-l", "role=server", cmd=("httpd", "-f", "-p", "80", "-h", "/var/www"))
    b = run_container(names("b"), net, "-l", "role=client")
    sa, sb = net_settings(a, net), net_settings(b, net)
    before = {e["id"]: e for e in agent.cli_json("endpoint", "list")}
    assert len(before) == 2

    agent.kill9()
    # The agent is gone; the datapath it set up keeps carrying traffic.
    exec_(b, "ping", "-c", "3", "-i", "0.2", "-W", "2", sa["IPAddress"])
    exec_(b, "ping6", "-c", "2", "-W", "2", sa["GlobalIPv6Address"])
    assert "docker-cilium" in exec_(b, "timeout", "5", "wget", "-q", "-O", "-", f"http://{sa['IPAddress']}/").stdout

    agent.start()
    after = {e["id"]: e for e in agent.cli_json("endpoint", "list")}
    assert set(after) == set(before)
    for eid, ep in after.items():
        assert ep["addressing"] == before[eid]["addressing"]
        assert ep["state"] == "ready"
        assert ep["docker-endpoint-id"] == before[eid]["docker-endpoint-id"]

    # New containers get addresses nobody holds.
    c = run_container(names("c"), net)
    sc = net_settings(c, net)
    assert sc["IPAddress"] not in (sa["IPAddress"], sb["IPAddress"])
    assert sc["GlobalIPv6Address"] not in (sa["GlobalIPv6Address"], sb["GlobalIPv6Address"])
    exec_(c, "ping", "-c", "1", "-W", "2", sa["IPAddress"])

    # Old ones are removed cleanly by the restarted agent.
    docker("rm", "-f", a, b)
    remaining = agent.cli_json("endpoint", "list")
    assert [e["addressing"]["ipv4"] for e in remaining] == [sc["IPAddress"]]
    docker("rm", "-f", c)
    docker("network", "rm", net)
    assert agent.cli_json("endpoint", "list") == []
    assert host_leaks() == []
    assert agent.cli_json("status")["ipam"]["ipv4"].startswith("0/")


def test_allocations_persist_before_reply(agent, names):
    """An address handed to dockerd is on disk: a crash right after cannot reuse it."""
    net = names("persist")
    create_network(net, "--driver", "cilium", "--ipam-driver", "cilium")
    a = run_container(names("a"), net)
    ip_a = net_settings(a, net)["IPAddress"]
    agent.kill9()
    agent.start()
    b = run_container(names("b"), net)
    assert net_settings(b, net)["IPAddress"] != ip_a
    ipam = json.loads(agent.cli("status", "-o", "json").stdout)["ipam"]
    assert ipam["ipv4"].startswith("2/")
    docker("rm", "-f", a, b)
    docker("network", "rm", net)
    assert agent.cli_json("endpoint", "list") == []
    assert host_leaks() == []

