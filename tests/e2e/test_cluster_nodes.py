"""The agent on a real etcd as one node of a cluster: its registry record, its
range claim, its endpoints in the shared ipcache, and another node's records
reaching `cilium node list` and the real cilium_ipcache map.

The "other node" is records written with etcdctl, as another agent would
write them (Cilium's Node and IPIdentityPair JSON); the multi-agent cases
run against etcd in tests/integration/test_node_registry.py.
"""

from __future__ import annotations

import json
import socket

import pytest

from tests.e2e.conftest import create_network, net_settings, run_container
from tests.e2e.test_etcd_agent import etcd_agent  # noqa: F401  (the agent on a real etcd)
from tests.helpers import run, wait_until
from tests.integration.conftest import etcd_server  # noqa: F401  (a real etcd for this module)

pytestmark = pytest.mark.etcd

REMOTE = "node-remote-e2e"
REMOTE_IP = "192.0.2.50"
REMOTE_NODE = {
    "Name": REMOTE, "Cluster": "default", "IPAddresses": [{"Type": "InternalIP", "IP": REMOTE_IP}],
    "IPv4AllocCIDR": {"IP": "10.200.0.0", "Mask": "//8AAA=="},
    "IPv6AllocCIDR": {"IP": "f00d::ac8:0:0:0", "Mask": "////////////////AAAAAA=="},
    "IPv4HealthIP": "10.200.0.1", "IPv6HealthIP": "f00d::ac8:0:0:1", "ClusterID": 0, "Source": "local",
    "EncryptionKey": 0,
}
REMOTE_EP = "10.200.0.7"


def etcdctl(address: str, *args: str) -> str:
    return run("etcdctl", f"--endpoints={address}", *args).stdout


def etcd_get(address: str, key: str) -> dict | None:
    out = etcdctl(address, "get", "--print-value-only", key).strip()
    return json.loads(out) if out else None


def test_agent_in_the_node_registry_and_shared_ipcache(etcd_agent, names):  # noqa: F811
    agent, address = etcd_agent
    try:
        registry_and_ipcache(agent, address, names)
    finally:
        for key in (f"cilium/state/nodes/v1/default/{REMOTE}", f"cilium/state/ip/v1/default/{REMOTE_EP}"):
            etcdctl(address, "del", key)


def registry_and_ipcache(agent, address: str, names) -> None:
    me = socket.gethostname()

    # This node: its record (Cilium's Node JSON) and its persistent range claim.
    nodes = agent.cli_json("node", "list")
    assert nodes["self"] == me and [n["name"] for n in nodes["nodes-added"]] == [me]
    mine = nodes["nodes-added"][0]["primary-address"]
    v4_range = mine["ipv4"]["alloc-range"]
    record = etcd_get(address, f"cilium/state/nodes/v1/default/{me}")
    assert record is not None and record["Name"] == me
    assert record["IPAddresses"] == [{"Type": "InternalIP", "IP": mine["ipv4"]["ip"]}]
    assert record["IPv4AllocCIDR"]["IP"] == v4_range.split("/")[0]
    claim = etcd_get(address, f"cilium/state/noderanges/v1/{v4_range}")
    assert claim is not None and claim["node"] == me

    # Another node joins: `cilium node list` shows it.
    etcdctl(address, "put", f"cilium/state/nodes/v1/default/{REMOTE}", json.dumps(REMOTE_NODE))
    wait_until(lambda: len(agent.cli_json("node", "list")["nodes-added"]) == 2, what="the remote node listed")
    remote = next(n for n in agent.cli_json("node", "list")["nodes-added"] if n["name"] == REMOTE)
    assert remote["primary-address"]["ipv4"] == {"enabled": True, "ip": REMOTE_IP, "alloc-range": "10.200.0.0/16"}
    table = agent.cli("node", "list").stdout
    assert REMOTE in table and "10.200.0.0/16" in table and me in table

    # A local endpoint is published with its identity and this node's IP.
    net = names("nodes-net")
    create_network(net, "--driver", "cilium", "--ipam-driver", "cilium")
    app = run_container(names("app"), net, "-l", "id=app")
    ip = net_settings(app, net)["IPAddress"]

    def published():
        eps = agent.cli_json("endpoint", "list")
        ident = eps[0]["identity"]["id"] if eps else 0
        pair = etcd_get(address, f"cilium/state/ip/v1/default/{ip}")
        return (pair, ident) if pair and ident >= 256 and pair["ID"] == ident else None
    pair, ident = wait_until(published, what="the endpoint in the shared ipcache")
    assert pair["HostIP"] == mine["ipv4"]["ip"] and pair["Metadata"] == me

    # A remote endpoint reaches the real cilium_ipcache with its tunnel endpoint, and leaves it.
    etcdctl(address, "put", f"cilium/state/ip/v1/default/{REMOTE_EP}", json.dumps(
        {"IP": REMOTE_EP, "Mask": None, "HostIP": REMOTE_IP, "ID": ident, "Key": 0, "Metadata": REMOTE}))

    def entry():
        return next((e for e in agent.cli_json("bpf", "ipcache", "list") if e["prefix"] == f"{REMOTE_EP}/32"), None)
    got = wait_until(entry, what="the remote endpoint in cilium_ipcache")
    assert (got["identity"], got["tunnel_endpoint"]) == (ident, REMOTE_IP)
    etcdctl(address, "del", f"cilium/state/ip/v1/default/{REMOTE_EP}")
    wait_until(lambda: entry() is None, what="the remote endpoint out of cilium_ipcache")

    # The node leaves; this agent restarted keeps its ranges and re-publishes its endpoint.
    etcdctl(address, "del", f"cilium/state/nodes/v1/default/{REMOTE}")
    wait_until(lambda: len(agent.cli_json("node", "list")["nodes-added"]) == 1, what="the remote node gone")
    agent.stop()
    etcdctl(address, "del", f"cilium/state/ip/v1/default/{ip}")  # as if its lease had expired meanwhile
    agent.start()
    again = agent.cli_json("node", "list")["nodes-added"][0]["primary-address"]
    assert again["ipv4"]["alloc-range"] == v4_range and again["ipv6"]["alloc-range"] == mine["ipv6"]["alloc-range"]
    wait_until(lambda: etcd_get(address, f"cilium/state/ip/v1/default/{ip}"), what="the endpoint published again")
