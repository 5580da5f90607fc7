"""The shared test cluster of `scripts/cluster.sh` (dc-test-cluster on
10.214.0.0/24, three nodes, three etcd members) and what the multi-host
tests do on it: commands on a node, containers on a node's cilium-net that
are removed whatever happens, and reachability checks between them.

One cluster serves every multi-host module (the session fixture
``test_cluster`` in conftest.py): `up` takes a minute, so it runs once; the
check that `down` leaves nothing (test_cluster.py::test_down_leaves_nothing)
is moved after the last test that uses the cluster.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import uuid
from contextlib import contextmanager
from typing import Iterator

from tests.helpers import ROOT, docker, wait_until

CLUSTER = "dc-test-cluster"
SUBNET = "10.214.0.0/24"
N = 3
NODES = [f"node{i}" for i in range(1, N + 1)]
ETCD = [f"10.214.0.{1 + i}:2379" for i in (1, 2, 3)]
ENV = {**os.environ, "CLUSTER": CLUSTER, "CLUSTER_SUBNET": SUBNET, "N": str(N)}
LABEL = f"label=docker-cilium.cluster={CLUSTER}"
NODE_INIT = "/opt/docker-cilium/scripts/cluster/node-init.sh"
NET = "cilium-net"
# Inner containers of test_cluster.py: their cgroups (the nodes share the
# host's cgroup namespace) must be gone after `down`.
INNER_IDS: list[str] = []


def node_ip(node: str) -> str:
    return f"10.214.0.{10 + int(node.removeprefix('node'))}"


def cluster(*args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(ROOT / "scripts" / "cluster.sh"), *args], capture_output=True, text=True,
                          timeout=timeout, env=ENV)
    if check and proc.returncode != 0:
        raise AssertionError(f"cluster.sh {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def on(node: str, *cmd: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    """``cmd`` on host ``node`` (scripts/cluster.sh exec)."""
    return cluster("exec", node, *cmd, check=check, timeout=timeout)


def cli_json(node: str, *args: str) -> object:
    return json.loads(on(node, "cilium", *args, "-o", "json").stdout)


def leftovers() -> dict[str, list[str]]:
    """What the cluster made that still exists on this host."""
    return {
        "containers": docker("ps", "-aq", "--filter", LABEL).stdout.split(),
        "networks": docker("network", "ls", "-q", "--filter", LABEL).stdout.split(),
        "volumes": docker("volume", "ls", "-q", "--filter", LABEL).stdout.split(),
        "dirs": [d for d in (f"/var/tmp/docker-cilium-{CLUSTER}",) if os.path.exists(d)],
        "cgroups": [d for i in INNER_IDS for d in cgroups_of(i)],
    }


def cgroups_of(container_id: str) -> list[str]:
    return glob.glob(f"/sys/fs/cgroup/memory/**/{container_id}", recursive=True)


def ensure_net(node: str) -> None:
    """cilium-net on ``node`` (IPv4 and IPv6, the handbook's command), made once."""
    if on(node, "docker", "network", "inspect", NET, check=False).returncode != 0:
        on(node, "docker", "network", "create", "--ipv6", "--subnet", "::1/112", "--driver", "cilium",
           "--ipam-driver", "cilium", NET)


class Box:
    """One busybox container on a node's cilium-net."""

    def __init__(self, node: str, name: str) -> None:
        self.node, self.name = node, name

    def addrs(self) -> tuple[str, str]:
        fmt = f'{{{{(index .NetworkSettings.Networks "{NET}").IPAddress}}}} ' \
              f'{{{{(index .NetworkSettings.Networks "{NET}").GlobalIPv6Address}}}}'
        v4, v6 = on(self.node, "docker", "inspect", "-f", fmt, self.name).stdout.split()
        return v4, v6

    def sh(self, *cmd: str, check: bool = False, timeout: float = 30) -> subprocess.CompletedProcess:
        return on(self.node, "docker", "exec", self.name, *cmd, check=check, timeout=timeout)

    def pings(self, ip: str) -> bool:
        return self.sh("ping", "-c", "1", "-W", "1", ip).returncode == 0

    def fetches(self, ip: str, port: int = 80) -> str | None:
        """The page ``ip:port`` serves to this container, None when it gets none."""
        host = f"[{ip}]" if ":" in ip else ip
        res = self.sh("timeout", "3", "wget", "-q", "-O", "-", f"http://{host}:{port}/", timeout=20)
        return res.stdout.strip() if res.returncode == 0 else None


class Boxes:
    """Containers a test starts on the cluster's nodes, all removed at the end."""

    def __init__(self) -> None:
        self.made: list[Box] = []
        self.tag = uuid.uuid4().hex[:6]

    def run(self, node: str, base: str, *args: str, serve: str | None = None) -> Box:
        """A container ``base-<tag>`` on ``node``; ``serve``: an HTTP server on
        port 80 whose page is that text."""
        box = Box(node, f"{base}-{self.tag}")
        cmd = ("sleep", "3600") if serve is None else \
            ("sh", "-c", f"mkdir -p /tmp/w && echo {serve} > /tmp/w/index.html && exec httpd -f -p 80 -h /tmp/w")
        self.made.append(box)
        on(node, "docker", "run", "-d", "--name", box.name, "--net", NET, *args, "busybox", *cmd)
        return box

    def remove(self) -> None:
        by_node: dict[str, list[str]] = {}
        for box in self.made:
            by_node.setdefault(box.node, []).append(box.name)
        for node, names in by_node.items():
            on(node, "docker", "rm", "-f", *names, check=False, timeout=120)
        self.made.clear()


@contextmanager
def boxes() -> Iterator[Boxes]:
    made = Boxes()
    try:
        yield made
    finally:
        made.remove()


def endpoint_of(node: str, name: str) -> dict | None:
    """``name``'s endpoint on ``node`` once it is ready with a cluster identity."""
    for ep in cli_json(node, "endpoint", "list"):  # type: ignore[union-attr]
        if ep["container-name"] == name and ep["identity"]["id"] >= 256 and ep["state"] == "ready":
            return ep
    return None


def wait_endpoint(box: Box, timeout: float = 60) -> dict:
    return wait_until(lambda: endpoint_of(box.node, box.name), timeout=timeout, interval=0.5,
                      what=f"{box.name}'s endpoint on {box.node} ready with an identity")


def wait_reach(src: Box, ip: str, timeout: float = 60) -> None:
    wait_until(lambda: src.pings(ip), timeout=timeout, interval=0.5,
               what=f"{src.name} on {src.node} pings {ip}")
