"""The node handler behind a real registry on a real etcd: another node's join and its lease-expiry leave.

node1's NodeHandler (fake route applier and tunnel map, the real IPCache on
a fake BPF map) subscribes to node1's registry; node2 is another etcd
client with its own short lease, which it stops refreshing. The kernel side
of the handler is tests/privileged/test_nodehandler_routes.py.
"""

from __future__ import annotations

import pytest

from docker_cilium.datapath.nodehandler import LocalNode, NodeHandler
from docker_cilium.identity.reserved import REMOTE_NODE
from docker_cilium.ipcache import IPCache
from docker_cilium.node import Node, NodeRegistry
from tests.integration.test_node_registry import (  # noqa: F401  (fixtures)
    NODE_IPS, TTL_S, Make, backend_kind, claim_all, make, prefix, until)
from tests.unit.test_node_registry import FakeIPCacheMap
from tests.unit.test_nodehandler import FakeRoutes, FakeTunnelMap

pytestmark = [pytest.mark.etcd, pytest.mark.timeout(120, method="thread")]


async def test_handler_follows_a_join_and_a_lease_expiry_leave(make: Make, prefix: str) -> None:  # noqa: F811
    stores = {"node1": await make(), "node2": await make(lease_ttl=TTL_S)}
    ranges = await claim_all(stores, prefix)
    r1, r2 = ranges["node1"], ranges["node2"]
    bpf = FakeIPCacheMap()
    ipcache = IPCache(stores["node1"], bpf)
    await ipcache.start([NODE_IPS["node1"]])
    routes, tunnel = FakeRoutes(), FakeTunnelMap()
    handler = NodeHandler(LocalNode("node1", str(r1.router4), str(r1.router6), 1350), "vxlan", routes, tunnel,
                          ipcache, retry_s=0.1)
    regs = {name: NodeRegistry(s, Node.local(name, "default", ranges[name], True), prefix=prefix + "nodes/",
                               retry_s=0.2) for name, s in stores.items()}
    await regs["node1"].start()
    regs["node1"].subscribe(handler)
    await handler.start()
    mine = {str(r2.ipv4_range), str(r2.ipv6_range)}
    try:
        await regs["node2"].start()
        await until(lambda: set(tunnel.entries) == mine and set(routes.table) == mine, 10)
        assert tunnel.entries[str(r2.ipv4_range)] == NODE_IPS["node2"]
        assert routes.table[str(r2.ipv4_range)].src == str(r1.router4)  # type: ignore[union-attr]
        assert bpf.entries[f"{NODE_IPS['node2']}/32"][0] == REMOTE_NODE
        assert bpf.entries[f"{r2.router4}/32"] == (REMOTE_NODE, NODE_IPS["node2"])

        await regs["node2"].close()
        await stores["node2"].close()  # no revoke: the agent just stops refreshing its lease
        took = await until(lambda: not tunnel.entries and not routes.table, TTL_S + 8)
        assert took <= TTL_S + 3
        assert f"{NODE_IPS['node2']}/32" not in bpf.entries or bpf.entries[f"{NODE_IPS['node2']}/32"][0] != REMOTE_NODE

        store2 = await make(lease_ttl=TTL_S)  # node2 restarted: same ranges, entries back
        again = (await claim_all({"node2": store2}, prefix))["node2"]
        regs["node2"] = NodeRegistry(store2, Node.local("node2", "default", again, True), prefix=prefix + "nodes/",
                                     retry_s=0.2)
        await regs["node2"].start()
        await until(lambda: set(tunnel.entries) == mine and set(routes.table) == mine, 10)
        assert handler.failures == 0
    finally:
        await handler.close()
        for r in regs.values():
            await r.close()
