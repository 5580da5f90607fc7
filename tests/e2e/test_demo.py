"""`make demo` / `make demo-down`: the handbook's walkthrough, for real.

The demo starts its own agent (embedded store) when none answers; here it is
given private state directories and a private bpffs root, and the test's own
API socket, so it never touches another agent's state. `make -o install`
runs the targets without their `install` prerequisite (the venv is this
tree's; `make install` would relink /usr/local/bin).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess

import pytest

from tests.e2e.conftest import cleanup_bpf, cleanup_host, iptables_leaks
from tests.helpers import ROOT, docker

DEMO_LABEL = "docker-cilium-demo=1"


def make(target: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    res = subprocess.run(["make", "-s", "-C", str(ROOT), "-o", "install", target], capture_output=True,
                         text=True, timeout=timeout, env=env)
    assert res.returncode == 0, f"make {target} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}"
    return res


def matrix(out: str, title: str) -> dict[str, str]:
    """The `FROM -> TO : allowed|denied` rows of the section starting with ``title``."""
    section = out.split(f"== {title}", 1)[1].split("\n== ", 1)[0]
    return {m[0]: m[1] for m in re.findall(r"^(app\d -> app\d) : (allowed|denied)$", section, re.M)}


def demo_containers() -> list[str]:
    return docker("ps", "-aq", "--filter", f"label={DEMO_LABEL}").stdout.split()


@pytest.fixture
def demo_env(dockerd, tmp_path_factory):
    work = tmp_path_factory.mktemp("demo")
    bpf_root = f"/sys/fs/bpf/dctest-{work.name}"
    env = {**os.environ,
           "DEMO_AGENT_FLAGS": f"--kvstore local --lib-dir {work}/lib --state-dir {work}/state "
                               f"--socket-path {work}/cilium.sock --bpf-root {bpf_root}",
           "CILIUM_HOST": f"{work}/cilium.sock", "DEMO_RUN_DIR": str(work), "DEMO_AGENT_LOG": f"{work}/agent.log"}
    cleanup_host()
    try:
        yield env
    finally:
        subprocess.run(["make", "-s", "-C", str(ROOT), "demo-down"], env=env, capture_output=True, timeout=120)
        # Whatever demo-down could not do.
        ids = demo_containers()
        if ids:
            docker("rm", "-f", *ids, check=False)
        if docker("network", "inspect", "-f", "{{index .Labels \"docker-cilium-demo\"}}", "cilium-net",
                  check=False).stdout.strip() == "1":
            docker("network", "rm", "cilium-net", check=False)
        pidfile = work / "demo-agent.pid"
        if pidfile.exists():
            try:
                os.kill(int(pidfile.read_text()), signal.SIGKILL)
            except ProcessLookupError:
                pass
        cleanup_host()
        cleanup_bpf(bpf_root)


def inspect_app1() -> dict:
    return json.loads(docker("inspect", "app1").stdout)[0]["NetworkSettings"]["Networks"]["cilium-net"]


def test_make_demo_matrix_idempotent_and_demo_down(demo_env):
    first = make("demo", demo_env).stdout
    # app1's IDs and addresses, as `docker inspect` has them.
    s1 = inspect_app1()
    for key, field in (("NetworkID", "NetworkID"), ("EndpointID", "EndpointID"), ("IPAddress", "IPAddress"),
                       ("IPv6", "GlobalIPv6Address")):
        assert re.search(rf"^{key}:\s+{re.escape(s1[field])}$", first, re.M), (key, first)
    assert re.fullmatch(r"[0-9a-f]{64}", s1["NetworkID"]) and re.fullmatch(r"[0-9a-f]{64}", s1["EndpointID"])
    assert "$ docker network create --ipv6 --subnet ::1/112 --driver cilium --ipam-driver cilium" in first, first
    assert matrix(first, "before the policy") == {"app2 -> app1": "allowed", "app3 -> app1": "allowed"}, first
    assert matrix(first, "after the policy") == {"app2 -> app1": "allowed", "app3 -> app1": "denied"}, first
    drops = first.split("== cilium monitor --type drop, while app3 tried", 1)[1].split("\n== ", 1)[0]
    assert "Policy denied" in drops, first
    agent_pid = int(open(demo_env["DEMO_RUN_DIR"] + "/demo-agent.pid").read())
    ids_first = set(demo_containers())
    assert len(ids_first) == 3

    # Again, over the running demo: the same result, the same agent, fresh containers, one network.
    second = make("demo", demo_env).stdout
    assert "cilium-agent is running" in second
    assert matrix(second, "before the policy") == {"app2 -> app1": "allowed", "app3 -> app1": "allowed"}, second
    assert matrix(second, "after the policy") == {"app2 -> app1": "allowed", "app3 -> app1": "denied"}, second
    assert int(open(demo_env["DEMO_RUN_DIR"] + "/demo-agent.pid").read()) == agent_pid
    ids_second = set(demo_containers())
    assert len(ids_second) == 3 and ids_second.isdisjoint(ids_first)
    assert docker("network", "ls", "-q", "--filter", "name=^cilium-net$").stdout.split().__len__() == 1

    # demo-down removes everything, including the agent it started and that agent's datapath.
    down = make("demo-down", demo_env).stdout
    assert "demo removed" in down
    assert demo_containers() == []
    assert docker("network", "inspect", "cilium-net", check=False).returncode != 0
    assert not os.path.exists(f"/proc/{agent_pid}")
    assert not os.path.exists(demo_env["DEMO_RUN_DIR"] + "/demo-agent.pid")
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert not re.search(r"^\d+: (lxc|cilium_)", links, re.M), links
    assert iptables_leaks() == []
    bpf_root = demo_env["DEMO_AGENT_FLAGS"].split("--bpf-root ")[1].split()[0]
    assert not os.path.exists(bpf_root)
    # ... and a second demo-down with nothing left is fine.
    assert "demo removed" in make("demo-down", demo_env).stdout


def test_demo_refuses_to_remove_someone_elses_app1(demo_env):
    docker("run", "-d", "--name", "app1", "--label", "docker-cilium-test=1", "busybox", "sleep", "600")
    try:
        res = subprocess.run(["make", "-s", "-C", str(ROOT), "-o", "install", "demo"], capture_output=True,
                             text=True, timeout=300, env=demo_env)
        assert res.returncode != 0
        assert "a container named app1 exists and is not the demo's" in res.stderr, res.stdout + res.stderr
        assert docker("inspect", "-f", "{{.State.Running}}", "app1").stdout.strip() == "true"
    finally:
        docker("rm", "-f", "app1", check=False)
