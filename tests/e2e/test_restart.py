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


def restart_dockerd() -> None:
    """Restart dockerd the way it was started (systemd, or our services script)."""
    import subprocess
    import time

    from tests.helpers import ROOT, run

    if subprocess.run(["systemctl", "is-active", "--quiet", "docker"], capture_output=True).returncode == 0:
        run("systemctl", "restart", "docker", timeout=120)
        return
    subprocess.run(["pkill", "-TERM", "-x", "dockerd"])
    deadline = time.monotonic() + 60
    while subprocess.run(["pgrep", "-x", "dockerd"], capture_output=True).returncode == 0:
        assert time.monotonic() < deadline, "dockerd did not stop"
        time.sleep(0.5)
    run(str(ROOT / "scripts" / "services.sh"), "dockerd", timeout=120)


def test_dockerd_restart(agent, names):
    """dockerd restarts: containers with a restart policy come back wired, with
    their labels and identity; the endpoints of the old sandboxes are gone."""
    from tests.helpers import wait_until

    net = names("dockerd-restart")
    net_id = create_network(net, "--ipv6", "--subnet", "::1/112", "--driver", "cilium", "--ipam-driver", "cilium")
    srv = run_container(names("srv"), net, "--restart", "always", "-l", "id=srv",
                        cmd=("httpd", "-f", "-p", "80", "-h", "/var/www"))
    cli = run_container(names("cli"), net, "--restart", "always", "-l", "id=cli")

    mine = {names("srv"), names("cli")}

    def identities():
        named = {e["container-name"]: e for e in agent.cli_json("endpoint", "list")
                 if e["docker-network-id"] == net_id}
        ok = set(named) == mine and all(e["identity"]["id"] >= 256 and e["state"] == "ready"
                                        for e in named.values())
        return named if ok else None

    before = wait_until(identities, what="labelled endpoints")
    restart_dockerd()
    after = wait_until(identities, timeout=60, what="endpoints after dockerd restart")
    for name in (names("srv"), names("cli")):
        assert after[name]["identity"]["id"] == before[name]["identity"]["id"]
    ip = net_settings(srv, net)["IPAddress"]
    assert "docker-cilium" in exec_(cli, "timeout", "5", "wget", "-q", "-O", "-", f"http://{ip}/").stdout
    docker("rm", "-f", srv, cli)
    docker("network", "rm", net)
    assert [e for e in agent.cli_json("endpoint", "list") if e["docker-network-id"] == net_id] == []
