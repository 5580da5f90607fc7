"""dockerd restarts (and the host reboots) under running cilium containers.

Containers with ``--restart always`` on a cilium network must come back with
addresses, their identities and the policy enforced: dockerd restarts them
only if the driver answers, which is what ordering the agent's unit
``Before=docker.service`` (contrib/systemd/cilium.service) guarantees at boot.
The shared dockerd is restarted the way it was started, and is up again after
each test whatever happened.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from tests.e2e.conftest import create_network, net_settings, run_container
from tests.e2e.test_policy_demo import reaches
from tests.helpers import ROOT, VENV_BIN, docker, run, wait_until

DOCKERD_PIDFILE = "/var/run/docker.pid"
POLICY = [{"labels": [{"key": "name", "value": "restart-rule"}],
           "endpointSelector": {"matchLabels": {"id": "srv"}},
           "ingress": [{"fromEndpoints": [{"matchLabels": {"id": "cli"}}],
                        "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}]}]}]}]


def dockerd_pid() -> int | None:
    """The running dockerd's pid from its pid file (None when it is not running)."""
    try:
        pid = int(open(DOCKERD_PIDFILE).read().strip())
        with open(f"/proc/{pid}/comm") as f:
            return pid if f.read().strip() == "dockerd" else None
    except (OSError, ValueError):
        return None


def under_systemd() -> bool:
    return os.path.isdir("/run/systemd/system") and subprocess.run(
        ["systemctl", "is-active", "--quiet", "docker"], capture_output=True).returncode == 0


def stop_dockerd() -> None:
    """SIGTERM to dockerd's own pid (it stops its containers first), then wait for it to exit."""
    pid = dockerd_pid()
    assert pid is not None, "dockerd is not running"
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 90
    while os.path.exists(f"/proc/{pid}"):
        assert time.monotonic() < deadline, "dockerd did not stop in 90 s"
        time.sleep(0.3)


def start_dockerd() -> None:
    run(str(ROOT / "scripts" / "services.sh"), "dockerd", timeout=120)


@pytest.fixture
def dockerd_back(dockerd):
    """The shared dockerd is running after the test, even when it failed half-way."""
    try:
        yield
    finally:
        if docker("info", check=False, timeout=30).returncode != 0:
            if under_systemd():
                run("systemctl", "start", "docker", timeout=120)
            else:
                start_dockerd()


def restart_dockerd() -> None:
    """Restart dockerd the way it was started (systemd, or scripts/services.sh)."""
    if under_systemd():
        run("systemctl", "restart", "docker", timeout=120)
        return
    stop_dockerd()
    start_dockerd()


def restart_policy_apps(agent, names, tmp_path):
    """srv (HTTP, id=srv), cli (id=cli) and other (id=other), all --restart always,
    and a rule that lets only id=cli reach id=srv on TCP 80; returns (net, net_id)."""
    net = names("restart-always")
    net_id = create_network(net, "--ipv6", "--subnet", "::1/112", "--driver", "cilium", "--ipam-driver", "cilium")
    run_container(names("srv"), net, "--restart", "always", "-l", "id=srv",
                  cmd=("httpd", "-f", "-p", "80", "-h", "/var/www"))
    run_container(names("cli"), net, "--restart", "always", "-l", "id=cli")
    run_container(names("other"), net, "--restart", "always", "-l", "id=other")
    policy = tmp_path / "restart-rule.json"
    policy.write_text(json.dumps(POLICY))
    rev = int(agent.cli("policy", "import", str(policy)).stdout.split()[-1])
    agent.cli("policy", "wait", str(rev))
    return net, net_id


def endpoints(agent, names, net_id):
    """The three apps' endpoints once each is ready with a non-reserved identity, else None."""
    mine = {names("srv"), names("cli"), names("other")}
    named = {e["container-name"]: e for e in agent.cli_json("endpoint", "list")
             if e["docker-network-id"] == net_id}
    ok = set(named) == mine and all(e["identity"]["id"] >= 256 and e["state"] == "ready" for e in named.values())
    return named if ok else None


def assert_wired_and_enforced(agent, names, net, net_id, before):
    """After the restart: same identities, addresses that dockerd and the agent agree on,
    srv reachable from cli (IPv4, IPv6) and not from other."""
    after = wait_until(lambda: endpoints(agent, names, net_id), timeout=90, what="endpoints after the restart")
    for name, ep in after.items():
        assert ep["identity"]["id"] == before[name]["identity"]["id"], name
        s = net_settings(name, net)
        assert s["IPAddress"] and s["GlobalIPv6Address"], (name, s)
        assert (ep["addressing"]["ipv4"], ep["addressing"]["ipv6"]) == (s["IPAddress"], s["GlobalIPv6Address"])
        assert ep["docker-endpoint-id"] == s["EndpointID"]
    srv = net_settings(names("srv"), net)
    assert after[names("srv")]["policy"]["ingress-enforced"] is True
    assert wait_until(lambda: reaches(names("cli"), srv["IPAddress"]), timeout=20, what="cli -> srv")
    assert reaches(names("cli"), srv["GlobalIPv6Address"])
    assert not reaches(names("other"), srv["IPAddress"])
    assert not reaches(names("other"), srv["GlobalIPv6Address"])
    return after


def test_dockerd_restart_brings_back_restart_always_containers(agent, names, tmp_path, dockerd_back):
    net, net_id = restart_policy_apps(agent, names, tmp_path)
    before = wait_until(lambda: endpoints(agent, names, net_id), what="labelled endpoints")
    srv = net_settings(names("srv"), net)["IPAddress"]
    assert reaches(names("cli"), srv) and not reaches(names("other"), srv)

    restart_dockerd()
    after = assert_wired_and_enforced(agent, names, net, net_id, before)
    # New sandboxes: dockerd made new endpoints; the old ones are gone from the agent.
    assert {e["id"] for e in after.values()}.isdisjoint(e["id"] for e in before.values())
    assert len([e for e in agent.cli_json("endpoint", "list") if e["docker-network-id"] == net_id]) == 3

    docker("rm", "-f", *(names(n) for n in ("srv", "cli", "other")))
    docker("network", "rm", net)
    assert [e for e in agent.cli_json("endpoint", "list") if e["docker-network-id"] == net_id] == []


def test_reboot_order_agent_before_dockerd(agent, names, tmp_path, dockerd_back):
    """A reboot as systemd orders it: dockerd stops before the agent, the kernel
    state is gone (`cilium cleanup`), the agent starts before dockerd, which
    then restarts the containers: they are wired and policed again."""
    net, net_id = restart_policy_apps(agent, names, tmp_path)
    before = wait_until(lambda: endpoints(agent, names, net_id), what="labelled endpoints")

    stop_dockerd()
    agent.stop()
    run(str(VENV_BIN / "cilium"), "-H", agent.api_socket, "cleanup", "-f", "--lib-dir", str(agent.lib_dir),
        "--state-dir", str(agent.state_dir), "--bpf-root", agent.bpf_root, "--plugin-socket", agent.plugin_socket)
    agent.start()
    start_dockerd()

    assert_wired_and_enforced(agent, names, net, net_id, before)
    assert agent.cli("policy", "get").stdout.count("restart-rule") >= 1

    docker("rm", "-f", *(names(n) for n in ("srv", "cli", "other")))
    docker("network", "rm", net)
    assert [e for e in agent.cli_json("endpoint", "list") if e["docker-network-id"] == net_id] == []
