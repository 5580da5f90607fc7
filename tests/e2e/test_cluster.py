"""`scripts/cluster.sh` (`make cluster`): kind-style simulated hosts, each a
container with its own dockerd, bpffs and agent on a 3-member etcd.

The cluster (under its own name and subnet, so a developer's `make cluster`
is left alone) is the session's shared one (conftest.multihost); the last
test, run after every test on it, checks that `down` leaves no container,
network, volume or prebuilt-object folder behind.
"""

from __future__ import annotations

import json
import os

import pytest

from tests.e2e.cluster import CLUSTER, INNER_IDS, LABEL, N, NODES, cgroups_of, cluster, ensure_net, leftovers
from tests.helpers import docker, run, wait_until


@pytest.fixture
def up(multihost):
    """The shared cluster (conftest.multihost), up for the session."""
    return multihost


def node_ids() -> dict[str, str]:
    out = docker("ps", "--filter", LABEL, "--format", "{{.Names}} {{.ID}}").stdout
    return dict(line.split() for line in out.splitlines())


def test_up_starts_n_nodes_and_three_etcd_members(up):
    names = set(node_ids())
    assert names == {f"{CLUSTER}-{n}" for n in NODES} | {f"{CLUSTER}-etcd{i}" for i in (1, 2, 3)}, names
    members = run("etcdctl", "--endpoints", ",".join(f"10.214.0.{1 + i}:2379" for i in (1, 2, 3)),
                  "member", "list", "-w", "json").stdout
    assert sorted(m["name"] for m in json.loads(members)["members"]) == ["etcd1", "etcd2", "etcd3"]


def test_every_node_has_its_own_dockerd_address_and_bpffs(up):
    host_bpffs = os.stat("/sys/fs/bpf").st_dev if os.path.ismount("/sys/fs/bpf") else None
    devs, addrs = set(), set()
    for i, node in enumerate(NODES, start=1):
        # Each node's own dockerd answers (its name is the node's hostname).
        assert cluster("exec", node, "docker", "info", "-f", "{{.Name}}").stdout.strip() == node
        addr = cluster("exec", node, "ip", "-4", "-o", "addr", "show", "eth0").stdout
        assert f"10.214.0.{10 + i}/24" in addr, addr
        addrs.add(addr.split()[3])
        fs = cluster("exec", node, "stat", "-f", "-c", "%T", "/sys/fs/bpf").stdout.strip()
        assert fs == "bpf_fs", fs
        devs.add(cluster("exec", node, "stat", "-c", "%d", "/sys/fs/bpf").stdout.strip())
    assert len(addrs) == N and len(devs) == N, (addrs, devs)
    assert str(host_bpffs) not in devs


def test_every_agent_status_is_ok_on_etcd(up):
    for node in NODES:
        st = json.loads(cluster("exec", node, "cilium", "status", "-o", "json").stdout)
        kv = st["kvstore"]
        assert kv["state"] == "Ok", (node, kv)
        assert kv["msg"].startswith("etcd"), (node, kv)
        assert st["container-runtime"]["state"] == "Ok", (node, st["container-runtime"])
        conf = cluster("exec", node, "cat", "/etc/cilium/etcd.yaml").stdout
        assert all(f"- http://10.214.0.{1 + i}:2379" in conf for i in (1, 2, 3)), conf


def test_node_datapath_connects_containers_and_allocates_identities_in_cluster_etcd(up):
    """A node's agent serves its dockerd: cilium-net, two endpoints that reach
    each other through the BPF datapath, identities in the cluster's etcd."""
    label = f"id=cluster-{os.getpid()}"
    ensure_net("node1")
    for name in ("app1", "app2"):
        INNER_IDS.append(cluster("exec", "node1", "docker", "run", "-d", "--name", name, "-l", f"{label}-{name}",
                                 "--net", "cilium-net", "busybox", "sleep", "600").stdout.strip())
    ip1 = cluster("exec", "node1", "docker", "inspect", "-f",
                  '{{(index .NetworkSettings.Networks "cilium-net").IPAddress}}', "app1").stdout.strip()
    assert ip1.startswith("10."), ip1
    assert all(cgroups_of(i) for i in INNER_IDS), "inner containers' cgroups are not where the down test looks"
    wait_until(lambda: cluster("exec", "node1", "docker", "exec", "app2", "ping", "-c1", "-W1", ip1,
                               check=False).returncode == 0, timeout=30, what="app2 pings app1 on node1")
    keys = run("etcdctl", "--endpoints", "10.214.0.2:2379", "get", "--prefix", "cilium/state/identities/v1/value/",
               "--keys-only").stdout
    assert f"container:{label}-app1;/node1" in keys, keys


def test_exec_runs_busybox_on_node2(up):
    proc = cluster("exec", "node2", "docker", "run", "--rm", "busybox", "echo", "hello from node2")
    assert proc.stdout.strip() == "hello from node2"


def test_node_agent_and_dockerd_stop_and_start_inside_a_running_node(up):
    """node-init.sh stops and starts a node's services (a host's crash and
    restart) while the node container, its address and the others stay."""
    init = "/opt/docker-cilium/scripts/cluster/node-init.sh"

    def agent_ok() -> bool:
        proc = cluster("exec", "node3", "cilium", "status", "-o", "json", check=False)
        return proc.returncode == 0 and json.loads(proc.stdout)["kvstore"]["state"] == "Ok"

    for svc in ("agent", "dockerd"):
        cluster("exec", "node3", init, "stop", svc)
    assert not agent_ok()
    assert cluster("exec", "node3", "docker", "info", check=False).returncode != 0
    assert "Ok" in cluster("exec", "node2", "cilium", "status").stdout
    for svc in ("dockerd", "agent"):
        cluster("exec", "node3", init, "start", svc)
    wait_until(agent_ok, timeout=60, what="node3's agent back on etcd")
    assert cluster("exec", "node3", "docker", "run", "--rm", "busybox", "true").returncode == 0


def test_up_again_keeps_the_running_cluster(up):
    before = node_ids()
    cluster("up")
    assert node_ids() == before


def test_down_leaves_nothing(up):
    assert len(INNER_IDS) == 2 and all(len(i) == 64 for i in INNER_IDS), INNER_IDS
    assert any(leftovers().values())
    cluster("down")
    assert leftovers() == {"containers": [], "networks": [], "volumes": [], "dirs": [], "cgroups": []}
    cluster("down")  # idempotent
