"""Three agents' node registries, range claims and shared ipcaches against one real etcd.

Each "agent" is its own etcd client with its own session lease and node
name, in one process: the parts of the agent that talk to the cluster store.
Keys live under a prefix unique to the test (removed afterwards), so the
suite cannot meet another test's keys.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import AsyncIterator, Awaitable, Callable

import pytest

from docker_cilium.ipam.ranges import NodeAddressing
from docker_cilium.ipcache import IPCache
from docker_cilium.ipcache.kvstore import SharedIPCache
from docker_cilium.kvstore.etcd import EtcdBackend
from docker_cilium.node import Node, NodeRegistry, RangeClaims
from tests.unit.test_node_registry import FakeIPCacheMap, Recorder

# Each test normally takes a few seconds; one hung once under a loaded full
# run (not reproduced in 6 runs alone): fail it with a stack dump rather
# than stall the suite.
pytestmark = [pytest.mark.etcd, pytest.mark.timeout(120, method="thread")]

TTL_S = 2  # the dying node's lease: etcd's minimum with the test server's election timeout
NODE_IPS = {"node1": "192.168.1.7", "node2": "192.168.2.7", "node3": "172.18.0.7"}  # all end in .7

Make = Callable[..., Awaitable[EtcdBackend]]


@pytest.fixture
async def prefix(etcd_server: str) -> AsyncIterator[str]:
    """A key prefix of this test's own; everything under it is deleted at the end."""
    p = f"test-{uuid.uuid4().hex}/cilium/state/"
    yield p
    b = EtcdBackend([etcd_server])
    await b.connect()
    await b.delete_prefix(p)
    await b.close()


@pytest.fixture
def backend_kind() -> str:
    """Only etcd here (``backend_factory`` gives etcd clients); the SQLite runs are the unit tests'."""
    return "etcd"


@pytest.fixture
def make(backend_factory: Make) -> Make:
    """``await make(lease_ttl)``: another connected etcd client (another agent)."""
    return backend_factory


async def until(pred: Callable[[], bool], timeout: float) -> float:
    """Wait for ``pred``; returns the seconds it took."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    while not pred():
        assert loop.time() - t0 < timeout, f"condition not met within {timeout}s"
        await asyncio.sleep(0.05)
    return loop.time() - t0


async def claim_all(stores: dict[str, EtcdBackend], prefix: str) -> dict[str, NodeAddressing]:
    got = await asyncio.gather(*(RangeClaims(s, name, prefix=prefix + "noderanges/").claim(NODE_IPS[name])
                                 for name, s in stores.items()))
    return dict(zip(stores, got))


async def test_three_agents_ranges_never_overlap_and_survive_restart(make: Make, prefix: str) -> None:
    """Three nodes whose IPs end in the same byte claim together: no overlap (IPv4 or
    IPv6); each restarted (a new client, the old session revoked) gets the same ranges."""
    stores = {name: await make() for name in NODE_IPS}
    first = await claim_all(stores, prefix)
    nets = list(first.values())
    for i, a in enumerate(nets):
        for b in nets[i + 1:]:
            assert not a.ipv4_range.overlaps(b.ipv4_range) and not a.ipv6_range.overlaps(b.ipv6_range)
    assert sorted(str(n.ipv4_range) for n in nets) == ["10.7.0.0/16", "10.8.0.0/16", "10.9.0.0/16"]
    for s in stores.values():
        await s.revoke_session()
    restarted = await claim_all({name: await make() for name in reversed(list(NODE_IPS))}, prefix)
    assert restarted == first


async def test_dead_node_leaves_and_rejoins_with_its_ranges(make: Make, prefix: str) -> None:
    """node3 stops refreshing its lease: node1 and node2 drop it within the lease TTL;
    started again under the same name it rejoins with the same ranges."""
    stores = {"node1": await make(), "node2": await make(), "node3": await make(lease_ttl=TTL_S)}
    ranges = await claim_all(stores, prefix)
    regs = {name: NodeRegistry(s, Node.local(name, "default", ranges[name], True), prefix=prefix + "nodes/",
                               retry_s=0.2) for name, s in stores.items()}
    seen = Recorder()
    regs["node1"].subscribe(seen)
    for r in regs.values():
        await r.start()
    try:
        for r in regs.values():
            await until(lambda r=r: [n.name for n in r.nodes()] == ["node1", "node2", "node3"], 10)
        assert regs["node2"].get("node3") == regs["node3"].local

        await regs["node3"].close()
        await stores["node3"].close()  # no revoke: the agent just stops refreshing
        took = await until(lambda: all(r.get("node3") is None for n, r in regs.items() if n != "node3"),
                           TTL_S + 8)
        assert took <= TTL_S + 3 and ("left", "node3") in seen.events

        store3 = await make(lease_ttl=TTL_S)
        again = (await claim_all({"node3": store3}, prefix))["node3"]
        assert again == ranges["node3"]
        reg3 = NodeRegistry(store3, Node.local("node3", "default", again, True), prefix=prefix + "nodes/",
                            retry_s=0.2)
        await reg3.start()
        regs["node3"] = reg3
        await until(lambda: regs["node1"].get("node3") == reg3.local, 10)
        assert seen.events.count(("joined", "node3")) == 2
    finally:
        for r in regs.values():
            await r.close()


async def test_shared_ipcache_across_agents(make: Make, prefix: str) -> None:
    """An endpoint on node1 reaches node2's and node3's ipcache with its identity and
    node1's IP as tunnel endpoint; deleted, it leaves; node1 dying takes the rest."""
    stores = {"node1": await make(lease_ttl=TTL_S), "node2": await make(), "node3": await make()}
    maps = {name: FakeIPCacheMap() for name in stores}
    caches = {name: IPCache(s, maps[name]) for name, s in stores.items()}
    shared = {}
    for name, s in stores.items():
        await caches[name].start([NODE_IPS[name]])
        shared[name] = SharedIPCache(s, caches[name], name, NODE_IPS[name], prefix=prefix + "ip/", retry_s=0.2)
        await shared[name].start()
    try:
        caches["node1"].upsert_endpoint(11, ("10.7.0.20", "f00d::a07:0:0:20"), 40001)
        caches["node1"].upsert_endpoint(12, ("10.7.0.21", None), 40002)
        caches["node2"].upsert_endpoint(21, ("10.8.0.30", None), 40001)
        for name in ("node2", "node3"):
            await until(lambda name=name: {"10.7.0.20/32", "10.7.0.21/32", "f00d::a07:0:0:20/128"}
                        <= set(maps[name].entries), 10)
            assert maps[name].entries["10.7.0.20/32"] == (40001, "192.168.1.7")
            assert maps[name].entries["f00d::a07:0:0:20/128"] == (40001, "192.168.1.7")
        await until(lambda: maps["node1"].entries.get("10.8.0.30/32") == (40001, "192.168.2.7"), 10)

        caches["node1"].delete_endpoint(12, ("10.7.0.21", None))
        await until(lambda: "10.7.0.21/32" not in maps["node3"].entries, 10)

        await shared["node1"].close()
        await stores["node1"].close()  # node1 dies
        await until(lambda: not any(p.startswith(("10.7.", "f00d::a07")) for m in ("node2", "node3")
                                    for p in maps[m].entries), TTL_S + 8)
        assert maps["node3"].entries["10.8.0.30/32"] == (40001, "192.168.2.7")
    finally:
        for x in shared.values():
            await x.close()
