"""Issue 13's acceptance on the shared three-node cluster (tests/e2e/cluster.py):
containers on each host's cilium-net reach each other through VXLAN (IPv4
and IPv6), the handbook's l3 policy holds across hosts with one identity per
label set, a global service answers on every node, a crashed node ages out
of the others' routes, tunnel map and ipcache within its lease and rejoins
with its ranges, and etcd losing a member or its quorum breaks nothing that
was working.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import time

import pytest

from tests.e2e.cluster import (
    CLUSTER, ENV, ETCD, NET, NODE_INIT, NODES, Box, boxes, cli_json, ensure_net, node_ip, on,
    wait_endpoint, wait_reach,
)
from tests.helpers import ROOT, docker, run, wait_until

POLICY = "/opt/docker-cilium/tests/fixtures/policies/l3-rule.json"  # the checkout, mounted in every node
LEASE_S = 15  # the node registry's lease TTL
VIP4, VIP6 = "198.18.252.10", "fd00:dc6::10"


@pytest.fixture(scope="module")
def nets(multihost):
    """cilium-net on every node (the handbook's command, scope local), removed
    after the module when this module made it."""
    made = [n for n in NODES if on(n, "docker", "network", "inspect", NET, check=False).returncode != 0]
    for node in made:
        ensure_net(node)
    try:
        yield
    finally:
        for node in made:
            on(node, "docker", "network", "rm", NET, check=False)


def test_cross_node_ipv4_and_ipv6(nets):
    with boxes() as made:
        a = [made.run(node, f"x{node}") for node in NODES]
        for box in a:
            wait_endpoint(box)
        addrs = {box.name: box.addrs() for box in a}
        for src in a:
            for dst in a:
                if dst is src:
                    continue
                v4, v6 = addrs[dst.name]
                assert ipaddress.ip_address(v6).version == 6, v6
                wait_reach(src, v4, timeout=30)
                wait_reach(src, v6, timeout=30)


def test_cluster_health_reaches_every_node_by_address_and_through_the_tunnel(nets):
    """`cilium status`'s cluster health on every node: all nodes reachable at their
    address and through the tunnel (the probe to a node's cilium_host address leaves
    by to-overlay and arrives by from-overlay), as the agents' own prober sees it."""
    want = {node_ip(n) for n in NODES}

    def healthy() -> bool:
        for node in NODES:
            h = cli_json(node, "status")["cluster-health"]
            ok = {n["ip"] for n in h["nodes"] if n["host"]["reachable"] and n["tunnel"]["reachable"]}
            if (h["state"], h["reachable"], h["total"], ok) != ("Ok", len(NODES), len(NODES), want):
                return False
        return True

    wait_until(healthy, timeout=45, interval=2, what="every node's cluster health Ok")  # probes every 10 s
    out = on("node1", "cilium", "status").stdout
    assert f"{len(NODES)}/{len(NODES)} reachable" in out, out


def handbook_apps(made) -> tuple[Box, Box, Box]:
    """app1 (serving on 80) on node1, app2 on node2, app3 on node3."""
    app1 = made.run("node1", "app1", "-l", "id=app1", serve="docker-cilium")
    app2 = made.run("node2", "app2", "-l", "id=app2")
    app3 = made.run("node3", "app3", "-l", "id=app3")
    for box in (app1, app2, app3):
        wait_endpoint(box)
    return app1, app2, app3


def assert_l3_enforced(app1: Box, app2: Box, app3: Box) -> None:
    for ip in app1.addrs():
        wait_until(lambda: app2.fetches(ip) == "docker-cilium", timeout=30, interval=0.5,
                   what=f"app2 (node2) reaches app1 (node1) at {ip}:80")
        assert app3.fetches(ip) is None, f"app3 (node3) reached app1 at {ip}:80"
    assert not app2.pings(app1.addrs()[0])  # L4: TCP 80 only


def test_l3_policy_across_nodes_with_equal_identities(nets):
    with boxes() as made:
        app1, app2, app3 = handbook_apps(made)
        # Equal labels, equal identity on every node: id=app1 on node2 and node3 too.
        twins = [app1] + [made.run(node, f"app1{node}", "-l", "id=app1") for node in ("node2", "node3")]
        ids = {box.node: wait_endpoint(box)["identity"]["id"] for box in twins}
        assert len(set(ids.values())) == 1, ids
        ident = ids["node1"]
        labels = {node: next(i["labels"] for i in cli_json(node, "identity", "list") if i["id"] == ident)
                  for node in NODES}
        assert all(v == labels["node1"] for v in labels.values()) and "container:id=app1" in labels["node1"], labels
        # What node1 knows of app2's address: node2's identity for id=app2, node2 as tunnel endpoint.
        wait_ipcache("node1", app2, wait_endpoint(app2)["identity"]["id"])

        ip1 = app1.addrs()[0]
        wait_until(lambda: app3.fetches(ip1) == "docker-cilium", timeout=30, interval=0.5,
                   what="app3 reaches app1 without policy")
        for node in NODES:
            on(node, "cilium", "policy", "import", POLICY)
        try:
            assert_l3_enforced(app1, app2, app3)
        finally:
            for node in NODES:
                on(node, "cilium", "policy", "delete", "name=l3-rule", check=False)


def test_global_service_vip_reachable_from_every_node(nets):
    with boxes() as made:
        backends = [made.run(node, f"b{node}", serve=f"backend-{node}") for node in ("node2", "node3")]
        clients = [made.run(node, f"c{node}") for node in NODES]
        for box in backends + clients:
            wait_endpoint(box)
        v4s = ",".join(f"{b.addrs()[0]}:80" for b in backends)
        v6s = ",".join(f"[{b.addrs()[1]}]:80" for b in backends)
        on("node1", "cilium", "service", "update", "--id", "41", "--frontend", f"{VIP4}:80", "--backends", v4s)
        on("node1", "cilium", "service", "update", "--id", "42", "--frontend", f"[{VIP6}]:80", "--backends", v6s)
        try:
            # The records reach every node's agent (and its LB maps) with the one ID.
            for node in NODES:
                def listed(node: str = node) -> set[tuple[int, str]]:
                    got = {(m["spec"]["id"], json.dumps(m["spec"]["frontend-address"]))
                           for m in cli_json(node, "service", "list")}  # type: ignore[union-attr]
                    return {(i, fe) for i, fe in got if VIP4 in fe or VIP6 in fe}
                got = wait_until(lambda: len(listed()) == 2 and listed(), timeout=30, interval=0.5,
                                 what=f"services 41 and 42 in {node}'s `cilium service list`")
                assert sorted(i for i, _ in got) == [41, 42], (node, got)
                lb = on(node, "cilium", "bpf", "lb", "list").stdout
                assert f"{VIP4}:80" in lb and backends[0].addrs()[0] in lb, (node, lb)
            for client in clients:
                for vip in (VIP4, VIP6):
                    seen: set[str] = set()

                    def both() -> bool:
                        seen.add(client.fetches(vip) or "-")
                        return {"backend-node2", "backend-node3"} <= seen
                    wait_until(both, timeout=45, interval=0.2,
                               what=f"{vip} from {client.node} answered by the backends on node2 and node3")
                    assert seen - {"-"} == {"backend-node2", "backend-node3"}, seen
        finally:
            for sid in ("41", "42"):
                on("node1", "cilium", "service", "delete", sid, check=False)


def node3_state_on(node: str, ranges: tuple[str, str]) -> list[str]:
    """What ``node`` still has of node3: node record, routes, tunnel entries, ipcache entries."""
    left = []
    if any(n["name"] == "node3" for n in cli_json(node, "node", "list")["nodes-added"]):  # type: ignore[index]
        left.append("node list")
    routes = on(node, "ip", "-4", "route").stdout + on(node, "ip", "-6", "route").stdout
    left += [f"route {r}" for r in ranges if r in routes]
    tunnel = cli_json(node, "bpf", "tunnel", "list")
    left += [f"tunnel {r}" for r in ranges if r in json.dumps(tunnel)]
    left += [f"ipcache {e['prefix']}" for e in cli_json(node, "bpf", "ipcache", "list")  # type: ignore[union-attr]
             if e.get("tunnel_endpoint") == node_ip("node3")]
    return left


def node_ranges(node: str, of: str) -> tuple[str, str]:
    rec = next(n for n in cli_json(node, "node", "list")["nodes-added"] if n["name"] == of)  # type: ignore[index]
    addr = rec["primary-address"]
    return addr["ipv4"]["alloc-range"], addr["ipv6"]["alloc-range"]


def test_node_crash_ages_out_within_the_lease_and_rejoins_with_its_ranges(nets):
    with boxes() as made:
        c1 = made.run("node1", "crash-c1")
        c2 = made.run("node2", "crash-c2")
        c3 = made.run("node3", "crash-c3")
        for box in (c1, c2, c3):
            wait_endpoint(box)
        wait_reach(c1, c3.addrs()[0])
        ranges = node_ranges("node1", "node3")
        assert node3_state_on("node1", ranges), "node3 not known to node1 before the crash"
        # A crash: the agent killed (no goodbye in etcd), then dockerd stopped.
        on("node3", "sh", "-c", "kill -KILL $(cat /run/docker-cilium-node/agent.pid)")
        t0 = time.monotonic()
        on("node3", NODE_INIT, "stop", "agent")
        on("node3", NODE_INIT, "stop", "dockerd", timeout=90)
        try:
            for node in ("node1", "node2"):
                wait_until(lambda: node3_state_on(node, ranges) == [], timeout=LEASE_S + 20 - (time.monotonic() - t0),
                           interval=0.5, what=f"{node} drops node3's node, routes, tunnel and ipcache entries")
            gone_after = time.monotonic() - t0
            assert gone_after <= LEASE_S + 20, gone_after
            assert c1.pings(c2.addrs()[0]), "node1 -> node2 broken while node3 was down"
        finally:
            on("node3", NODE_INIT, "start", "dockerd", timeout=90)
            on("node3", NODE_INIT, "start", "agent")
        wait_until(lambda: on("node3", "cilium", "status", check=False).returncode == 0, timeout=90, interval=1,
                   what="node3's agent back")
        # The host is back: its containers start again (dockerd stopped them).
        on("node3", "docker", "start", c3.name)
        wait_endpoint(c3)
        wait_until(lambda: node_ranges("node1", "node3") == ranges, timeout=60, interval=0.5,
                   what="node3 back in node1's list with the same ranges")
        v4, v6 = c3.addrs()
        wait_reach(c1, v4)
        wait_reach(c1, v6)
        wait_reach(c3, c1.addrs()[0])


def wait_ipcache(node: str, box: Box, ident: int, timeout: float = 30) -> None:
    """``box``'s IPv4 address in ``node``'s cilium_ipcache with ``ident``, its node as tunnel endpoint."""
    prefix = f"{box.addrs()[0]}/32"

    def entry() -> bool:
        return any(e["prefix"] == prefix and e["identity"] == ident and e["tunnel_endpoint"] == node_ip(box.node)
                   for e in cli_json(node, "bpf", "ipcache", "list"))  # type: ignore[union-attr]
    wait_until(entry, timeout=timeout, interval=0.5, what=f"{box.name} ({prefix}, {ident}) in {node}'s ipcache")


def status(node: str) -> dict:
    """``cilium status -o json`` on ``node`` (it exits 1 while a component is unhealthy)."""
    proc = on(node, "cilium", "status", "-o", "json", check=False)
    return json.JSONDecoder().raw_decode(proc.stdout)[0]


def etcd(*members: int, action: str) -> None:
    docker(action, *[f"{CLUSTER}-etcd{i}" for i in members], timeout=60)


def etcd_healthy() -> bool:
    return run("etcdctl", "--endpoints", ",".join(ETCD), "endpoint", "health", check=False).returncode == 0


def test_etcd_loses_one_member_nothing_breaks(nets):
    with boxes() as made:
        c1 = made.run("node1", "e1-c1")
        wait_endpoint(c1)
        etcd(3, action="stop")
        try:
            late = made.run("node2", "e1-late", "-l", f"id=e1-{made.tag}")
            ep = wait_endpoint(late, timeout=60)
            assert ep["identity"]["id"] >= 256
            wait_ipcache("node1", late, ep["identity"]["id"])
            wait_reach(c1, late.addrs()[0], timeout=60)
            wait_reach(late, c1.addrs()[0], timeout=30)
            for node in NODES:
                assert status(node)["kvstore"]["state"] == "Ok", node
        finally:
            etcd(3, action="start")
        wait_until(etcd_healthy, timeout=60, interval=1, what="etcd3 back")


def test_etcd_quorum_loss_keeps_enforcing_and_catches_up(nets):
    with boxes() as made:
        app1, app2, app3 = handbook_apps(made)
        for node in NODES:
            on(node, "cilium", "policy", "import", POLICY)
        late_run: subprocess.Popen | None = None
        try:
            assert_l3_enforced(app1, app2, app3)
            etcd(2, 3, action="stop")
            try:
                for node in NODES:
                    wait_until(lambda: status(node)["kvstore"]["state"] == "Failure", timeout=60, interval=1,
                               what=f"{node}'s cilium status reports the KVStore failure")
                st = on("node1", "cilium", "status", check=False)
                assert st.returncode != 0 and "KVStore:" in st.stdout and "Failure" in st.stdout, st.stdout
                assert_l3_enforced(app1, app2, app3)
                # A container started during the outage (its docker run may wait for the agent).
                late = Box("node2", f"q-late-{made.tag}")
                made.made.append(late)
                late_run = subprocess.Popen(
                    [str(ROOT / "scripts" / "cluster.sh"), "exec", "node2", "docker", "run",
                     "-d", "--name", late.name, "--net", NET, "-l", f"id=q-{made.tag}", "busybox", "sleep", "3600"],
                    env=ENV, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(5)
                assert_l3_enforced(app1, app2, app3)
            finally:
                etcd(2, 3, action="start")
            wait_until(etcd_healthy, timeout=60, interval=1, what="etcd quorum back")
            for node in NODES:
                wait_until(lambda: status(node)["kvstore"]["state"] == "Ok", timeout=60, interval=1,
                           what=f"{node}'s kvstore Ok again")
            late_run.wait(timeout=120)
            ep = wait_endpoint(late, timeout=90)
            wait_ipcache("node1", late, ep["identity"]["id"], timeout=60)
            wait_reach(app1, late.addrs()[0], timeout=90)
            assert_l3_enforced(app1, app2, app3)
        finally:
            if late_run is not None and late_run.poll() is None:
                late_run.kill()
            for node in NODES:
                on(node, "cilium", "policy", "delete", "name=l3-rule", check=False)
