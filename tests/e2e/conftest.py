"""End-to-end fixtures: a real dockerd, a real agent, and a host left clean."""

from __future__ import annotations

import asyncio
import json
import os
import uuid

import pytest
from pyroute2 import IPRoute, NetNS, netns

from docker_cilium.datapath.iptables import Iptables
from tests.helpers import ROOT, Agent, docker, require_root, require_tool, run

TEST_LABEL = "docker-cilium-test=1"


def cleanup_docker() -> None:
    ids = docker("ps", "-aq", "--filter", f"label={TEST_LABEL}", check=False).stdout.split()
    if ids:
        docker("rm", "-f", *ids, check=False)
    for net in docker("network", "ls", "--filter", "label=" + TEST_LABEL, "-q", check=False).stdout.split():
        docker("network", "rm", net, check=False)


def cleanup_bpf(bpf_root: str) -> None:
    """Unpin the test agent's maps and programs (a private dir under /sys/fs/bpf)."""
    if os.path.isdir(bpf_root):
        for dirpath, dirnames, filenames in os.walk(bpf_root, topdown=False):
            for name in filenames:
                os.unlink(os.path.join(dirpath, name))
            os.rmdir(dirpath)


def cleanup_host() -> None:
    """Remove every link, route and rule the agent may have created."""
    with IPRoute() as ip:
        for link in ip.get_links():
            name = link.get("ifname") or ""
            if name.startswith("lxc") or name in ("cilium_host", "cilium_net"):
                try:
                    ip.link("del", index=link["index"])
                except Exception:
                    pass
    asyncio.run(Iptables().remove_all())


def iptables_leaks() -> list[str]:
    """Rules or chains of the agent's still in the host's iptables (``CILIUM_*``, ``cilium`` comments)."""
    leaks = []
    for binary in ("iptables-save", "ip6tables-save"):
        out = run(binary, check=False).stdout
        leaks += [f"{binary}: {line}" for line in out.splitlines() if "CILIUM_" in line or "cilium" in line]
    return leaks


def host_leaks() -> list[str]:
    leaks = []
    with IPRoute() as ip:
        leaks += [l.get("ifname") for l in ip.get_links() if (l.get("ifname") or "").startswith(("lxc", "tmp"))]
    return leaks


@pytest.fixture(scope="session")
def dockerd():
    require_root()
    require_tool("dockerd")
    if docker("info", check=False).returncode != 0:
        run(str(ROOT / "scripts" / "services.sh"), "dockerd", timeout=120)
    run(str(ROOT / "scripts" / "busybox-image.sh"), "busybox:latest", timeout=120)
    cleanup_docker()
    yield
    cleanup_docker()


@pytest.fixture(scope="module")
def agent(dockerd, tmp_path_factory):
    """One agent for a test module; the host is cleaned whatever happens."""
    yield from running_agent(tmp_path_factory.mktemp("agent"))


def running_agent(workdir, extra: list[str] | None = None, start: bool = True):
    """Body of an agent fixture: start it with ``extra`` flags (``start=False``:
    the test starts and stops it), yield it, then clean the host whatever happened."""
    cleanup_host()
    a = Agent(workdir, extra=extra)
    try:
        if start:
            a.start()
        yield a
    finally:
        cleanup_docker()
        a.stop()
        cleanup_host()
        cleanup_bpf(a.bpf_root)
    assert iptables_leaks() == [], "agent cleanup left iptables rules behind"


@pytest.fixture
def names():
    """Unique container/network names, all labelled for cleanup."""
    suffix = uuid.uuid4().hex[:6]
    return lambda base: f"dct-{base}-{suffix}"


def create_network(name: str, *args: str) -> str:
    return docker("network", "create", "--label", TEST_LABEL, *args, name).stdout.strip()


def run_container(name: str, net: str, *args: str, cmd: tuple[str, ...] = ("sleep", "3600")) -> str:
    return docker("run", "-d", "--name", name, "--label", TEST_LABEL, "--net", net, *args, "busybox", *cmd).stdout.strip()


def net_settings(container: str, net: str) -> dict:
    info = json.loads(docker("inspect", container).stdout)[0]
    return info["NetworkSettings"]["Networks"][net]


def exec_(container: str, *cmd: str, check: bool = True, timeout: float = 30):
    return docker("exec", container, *cmd, check=check, timeout=timeout)


OUTSIDE_NS = "dct-outside"
HOST_IF, NS_IF = "dctout0", "dctout1"
HOST_IP, NS_IPS = "198.18.99.1", ("198.18.99.2", "198.18.99.3")


@pytest.fixture
def outside_host():
    """A network namespace on a /29 beside the host (two addresses), with no route
    back to the container range: only masqueraded traffic gets answers."""
    if OUTSIDE_NS in netns.listnetns():
        netns.remove(OUTSIDE_NS)
    netns.create(OUTSIDE_NS)
    try:
        with IPRoute() as ip:
            ip.link("add", ifname=HOST_IF, kind="veth", peer={"ifname": NS_IF, "net_ns_fd": OUTSIDE_NS})
            idx = ip.link_lookup(ifname=HOST_IF)[0]
            ip.addr("add", index=idx, address=HOST_IP, prefixlen=29)
            ip.link("set", index=idx, state="up")
        with NetNS(OUTSIDE_NS) as ns:
            idx = ns.link_lookup(ifname=NS_IF)[0]
            for addr in NS_IPS:
                ns.addr("add", index=idx, address=addr, prefixlen=29)
            ns.link("set", index=idx, state="up")
            ns.link("set", index=ns.link_lookup(ifname="lo")[0], state="up")
        yield NS_IPS[0]
    finally:
        with IPRoute() as ip:
            found = ip.link_lookup(ifname=HOST_IF)
            if found:
                ip.link("del", index=found[0])
        netns.remove(OUTSIDE_NS)


@pytest.fixture(scope="session")
def agent_image(dockerd) -> str:
    """The agent image (Dockerfile), built once per session (and reused across
    sessions while its sources' hash is unchanged)."""
    from tests.e2e.shipenv import build_agent_image  # shipenv imports this module

    return build_agent_image()


@pytest.fixture(scope="session")
def multihost(dockerd):
    """The shared test cluster (tests/e2e/cluster.py), up once for every
    multi-host module and taken down at the end of the session whatever
    happened (test_down_leaves_nothing, moved after the last test using this
    fixture, takes it down first and checks what `down` leaves)."""
    from tests.e2e.cluster import cluster

    cluster("down")
    try:
        cluster("up")
        yield cluster
    finally:
        cluster("down", check=False)


def pytest_collection_modifyitems(session, config, items):
    """test_down_leaves_nothing runs right after the last test on the shared
    cluster, wherever the modules using it sort."""
    last = [i for i in items if i.name == "test_down_leaves_nothing" and "multihost" in i.fixturenames]
    users = [i for i in items if "multihost" in i.fixturenames and i not in last]
    if not last or not users:
        return
    items.remove(last[0])
    items.insert(items.index(users[-1]) + 1, last[0])
