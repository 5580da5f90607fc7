"""Node registry, range claims and the shared ipcache on the embedded (SQLite) store.

Several "agents" are several clients of one SQLite file, each with its own
session lease, exactly as agents would share etcd (the same suite runs
against a real etcd in tests/integration/test_node_registry.py).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import sqlite3
from types import SimpleNamespace

import pytest

from docker_cilium.datapath.nodehandler import LocalNode, NodeHandler
from docker_cilium.ipam.ranges import NodeAddressing
from docker_cilium.ipcache import IPCache
from docker_cilium.ipcache.kvstore import SharedIPCache
from docker_cilium.kvstore import keys
from docker_cilium.kvstore.sqlite import SQLiteBackend
from docker_cilium.node import Node, NodeRegistry, RangeClaims
from docker_cilium.node.cluster import ClusterNode
from tests.unit.test_nodehandler import FakeRoutes, FakeTunnelMap


class FakeIPCacheMap:
    """cilium_ipcache as a dict: prefix -> (identity, tunnel endpoint)."""

    def __init__(self) -> None:
        self.entries: dict[str, tuple[int, str | int]] = {}

    def upsert(self, prefix: str, identity: int, tunnel_endpoint: str | int = 0) -> None:
        self.entries[prefix] = (identity, tunnel_endpoint)

    def delete(self, prefix: str) -> bool:
        return self.entries.pop(prefix, None) is not None

    def dump(self) -> dict[str, SimpleNamespace]:
        return {p: SimpleNamespace(identity=i, tunnel_endpoint=t or None) for p, (i, t) in self.entries.items()}


class Recorder:
    """A NodeObserver that keeps what it was told."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def node_joined(self, node: Node) -> None:
        self.events.append(("joined", node.name))

    def node_updated(self, old: Node, new: Node) -> None:
        self.events.append(("updated", new.name))

    def node_left(self, node: Node) -> None:
        self.events.append(("left", node.name))


@pytest.fixture
async def clients(tmp_path):
    """``await make(ttl)``: another connected client (another agent) of one store."""
    made: list[SQLiteBackend] = []

    async def make(ttl: float = 15.0) -> SQLiteBackend:
        b = SQLiteBackend(str(tmp_path / "kvstore.db"), lease_ttl=ttl)
        await b.connect()
        made.append(b)
        return b

    yield make
    for b in made:
        await b.close()


async def until(pred, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not pred():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


def registry(store: SQLiteBackend, name: str, ip: str) -> NodeRegistry:
    """A registry for node ``name`` at ``ip`` with its derived ranges (not started)."""
    return NodeRegistry(store, Node.local(name, "default", NodeAddressing.derive(ip), True), retry_s=0.1)


def overlap(a: NodeAddressing, b: NodeAddressing) -> bool:
    return a.ipv4_range.overlaps(b.ipv4_range) or a.ipv6_range.overlaps(b.ipv6_range)


async def test_ranges_never_overlap_when_last_bytes_match(clients) -> None:
    """Three nodes whose IPs all end in .5 claim at once: three distinct /16s and /96s,
    the first choice still Cilium 1.x's derived 10.5.0.0/16 for one of them."""
    stores = [await clients() for _ in range(3)]
    ips = ["192.168.1.5", "192.168.2.5", "172.16.9.5"]
    got = await asyncio.gather(*(RangeClaims(s, f"node{i}").claim(ip) for i, (s, ip) in enumerate(zip(stores, ips))))
    for i, a in enumerate(got):
        for b in got[i + 1:]:
            assert not overlap(a, b), (a, b)
    assert {str(n.ipv4_range) for n in got} == {"10.5.0.0/16", "10.6.0.0/16", "10.7.0.0/16"}
    assert all(n.ipv6_range == NodeAddressing.derive("0.0.0.0", str(n.ipv4_range)).ipv6_range for n in got)
    assert await RangeClaims(stores[0], "x").claims() == {
        str(n.ipv4_range): f"node{i}" for i, n in enumerate(got)}


async def test_restarted_node_gets_its_ranges_back(clients) -> None:
    """A node that lost the derived range keeps its fallback range across restarts
    (the claim is not on the lease), and its session ending frees nothing."""
    a, b = await clients(), await clients()
    first = await RangeClaims(a, "node1").claim("192.168.1.5")
    second = await RangeClaims(b, "node2").claim("192.168.2.5")
    assert str(second.ipv4_range) == "10.6.0.0/16"
    await b.revoke_session()  # the agent died: its leased keys are gone, its claim is not
    await b.close()
    b2 = await clients()
    again = await RangeClaims(b2, "node2").claim("192.168.2.5")
    assert again == second
    assert (await RangeClaims(a, "node1").claim("192.168.1.5")) == first


async def test_flag_ranges_win_and_are_claimed(clients) -> None:
    """--ipv4-range/--ipv6-range win even over another node's claim; a free flag
    range is claimed so the derivation of a later node skips it."""
    a, b, c = await clients(), await clients(), await clients()
    await RangeClaims(a, "node1").claim("192.168.1.5")
    forced = await RangeClaims(b, "node2").claim("192.168.2.9", "10.5.0.0/16", "fd00:5::/96")
    assert (str(forced.ipv4_range), str(forced.ipv6_range)) == ("10.5.0.0/16", "fd00:5::/96")
    await RangeClaims(b, "node2").claim("192.168.2.9", "10.9.0.0/16")
    third = await RangeClaims(c, "node3").claim("192.168.3.9")
    assert str(third.ipv4_range) == "10.10.0.0/16"


def test_node_json_is_ciliums() -> None:
    """The record reads like Cilium's Node: net.IP strings, *cidr.CIDR as IP + base64 mask."""
    node = Node.local("node1", "default", NodeAddressing.derive("192.168.1.5"), enable_ipv6=True)
    doc = json.loads(node.to_json())
    assert doc["Name"] == "node1" and doc["Cluster"] == "default"
    assert doc["IPAddresses"] == [{"Type": "InternalIP", "IP": "192.168.1.5"}]
    assert doc["IPv4AllocCIDR"] == {"IP": "10.5.0.0", "Mask": "//8AAA=="}
    assert doc["IPv6AllocCIDR"] == {"IP": "f00d::a05:0:0:0", "Mask": "////////////////AAAAAA=="}
    assert doc["IPv4HealthIP"] == "10.5.0.1" and doc["IPv6HealthIP"] == "f00d::a05:0:0:1"
    assert Node.from_json(node.to_json()) == node
    assert node.tunnel_endpoint == "192.168.1.5"


async def test_registry_join_update_leave(clients) -> None:
    """Each agent sees every node; an updated record is an update; a node whose agent
    stops refreshing its lease leaves the others' view."""
    sa, sb = await clients(ttl=15.0), await clients(ttl=1.0)
    ra, rb = registry(sa, "node1", "192.168.1.5"), registry(sb, "node2", "192.168.2.6")
    seen = Recorder()
    ra.subscribe(seen)
    await ra.start()
    await rb.start()
    try:
        await until(lambda: [n.name for n in ra.nodes()] == ["node1", "node2"])
        assert [n.name for n in rb.nodes()] == ["node1", "node2"]
        assert ra.get("node2") == rb.local
        assert sa.name == "local" and await sa.get(f"{keys.NODES}default/node2") == rb.local.to_json()

        rb.update_local(Node.local("node2", "default", NodeAddressing.derive("192.168.2.7"), True))
        await rb.flush()
        await until(lambda: ("updated", "node2") in seen.events)
        assert ra.get("node2").tunnel_endpoint == "192.168.2.7"  # type: ignore[union-attr]

        await rb.close()
        await sb.close()  # keep-alive stops: the lease (1 s) expires
        await until(lambda: [n.name for n in ra.nodes()] == ["node1"], timeout=10)
        assert seen.events == [("joined", "node1"), ("joined", "node2"), ("updated", "node2"), ("left", "node2")]
    finally:
        await ra.close()
        await rb.close()


async def test_registry_rewrites_record_after_session_loss(clients) -> None:
    """A replaced session lease took our record with it: it is written again."""
    sa, sb = await clients(), await clients()
    ra, rb = registry(sa, "node1", "192.168.1.5"), registry(sb, "node2", "192.168.2.6")
    await ra.start()
    await rb.start()
    try:
        seen = Recorder()
        rb.subscribe(seen)
        await sa.revoke_session()
        await until(lambda: ("left", "node1") in seen.events and rb.get("node1") is not None)
        assert await sb.get(f"{keys.NODES}default/node1") == ra.local.to_json()
    finally:
        await ra.close()
        await rb.close()


async def test_shared_ipcache_entries_appear_and_disappear(clients) -> None:
    """A local endpoint's addresses reach the other node's ipcache with the identity
    and the owner's IP as tunnel endpoint; deleted, or the owner's lease gone, they leave."""
    sa, sb = await clients(ttl=1.0), await clients()
    maps = FakeIPCacheMap(), FakeIPCacheMap()
    ca, cb = IPCache(sa, maps[0]), IPCache(sb, maps[1])
    await ca.start(["192.168.1.5"])
    await cb.start(["192.168.2.6"])
    ca.upsert_endpoint(7, ("10.5.0.9", None), 30001)  # known before the start: published at start
    xa = SharedIPCache(sa, ca, "node1", "192.168.1.5", retry_s=0.1)
    xb = SharedIPCache(sb, cb, "node2", "192.168.2.6", retry_s=0.1)
    await xa.start()
    await xb.start()
    try:
        await until(lambda: "10.5.0.9/32" in maps[1].entries)
        assert maps[1].entries["10.5.0.9/32"] == (30001, "192.168.1.5")
        await ca.upsert_endpoints([(8, ("10.5.0.10", "f00d::a05:0:0:10"), 30002)])
        # two keys, written in either order: wait for both
        await until(lambda: {"10.5.0.10/32", "f00d::a05:0:0:10/128"} <= maps[1].entries.keys())
        assert maps[1].entries["10.5.0.10/32"] == (30002, "192.168.1.5")
        assert maps[1].entries["f00d::a05:0:0:10/128"] == (30002, "192.168.1.5")
        assert xb.remote() == {"10.5.0.9", "10.5.0.10", "f00d::a05:0:0:10"}
        raw = json.loads(await sb.get(f"{keys.IPCACHE}default/10.5.0.10") or b"{}")
        assert raw == {"IP": "10.5.0.10", "Mask": None, "HostIP": "192.168.1.5", "ID": 30002, "Key": 0,
                       "Metadata": "node1"}
        assert xa.remote() == set() and maps[0].entries["10.5.0.9/32"] == (30001, 0)  # ours stay local

        ca.delete_endpoint(7, ("10.5.0.9", None))
        await until(lambda: "10.5.0.9/32" not in maps[1].entries)

        await xa.close()
        await sa.close()  # node1 dies: its lease (1 s) takes its entries
        await until(lambda: not xb.remote(), timeout=10)
        assert not any(ipaddress.ip_network(p).prefixlen in (32, 128) and p.startswith(("10.5", "f00d"))
                       for p in maps[1].entries)
    finally:
        await xa.close()
        await xb.close()


async def test_shared_ipcache_records_cannot_claim_host_or_node_local_identities(clients) -> None:
    """A record (a misbehaving agent, etcdctl) naming reserved:host becomes reserved:remote-node;
    one naming a node-local CIDR identity is ignored, as is the same record turned bad later."""
    sa, sb = await clients(), await clients()
    m = FakeIPCacheMap()
    cache = IPCache(sb, m)
    await cache.start(["192.168.2.6"])
    xb = SharedIPCache(sb, cache, "node2", "192.168.2.6", retry_s=0.1)
    await xb.start()
    try:
        def rec(ip: str, identity: int) -> bytes:
            return json.dumps({"IP": ip, "HostIP": "192.168.1.5", "ID": identity, "Metadata": "node1"}).encode()

        await sa.put(f"{keys.IPCACHE}default/10.5.0.7", rec("10.5.0.7", 1), lease=True)
        await sa.put(f"{keys.IPCACHE}default/10.5.0.8", rec("10.5.0.8", (1 << 24) | 5), lease=True)
        await sa.put(f"{keys.IPCACHE}default/10.5.0.9", rec("10.5.0.9", 30001), lease=True)
        await until(lambda: "10.5.0.9/32" in m.entries)
        assert m.entries["10.5.0.7/32"] == (6, "192.168.1.5")
        assert "10.5.0.8/32" not in m.entries and xb.remote() == {"10.5.0.7", "10.5.0.9"}
        await sa.put(f"{keys.IPCACHE}default/10.5.0.9", rec("10.5.0.9", (1 << 24) | 5), lease=True)
        await until(lambda: "10.5.0.9/32" not in m.entries)
    finally:
        await xb.close()


async def test_restart_sweeps_ipcache_entries_no_node_publishes_after_both_listings(clients) -> None:
    """The pinned map holds what the last run wrote: entries of a node (192.168.9.9) and its
    endpoint that left meanwhile go; live nodes' entries, local endpoints' (restored later)
    and the world entries stay, and the live ones are never deleted on the way."""
    sa, sb = await clients(), await clients()
    a = ClusterNode(sa, "node1", True)
    await a.start(await a.claim("192.168.1.5", None, None), IPCache(sa, None))
    a.ipcache._local_changed("10.5.0.9", 30001)  # type: ignore[union-attr]  # node1's endpoint
    await a.ipcache.flush()  # type: ignore[union-attr]
    m = FakeIPCacheMap()
    cache = IPCache(sb, m)
    await cache.start(["192.168.2.6"])
    m.entries.update({"10.9.0.5/32": (40000, "192.168.9.9"), "192.168.9.9/32": (6, 0),
                      "10.9.0.1/32": (6, "192.168.9.9"), "10.6.0.3/32": (30002, 0),
                      "192.168.1.5/32": (6, 0), "10.5.0.1/32": (6, "192.168.1.5")})
    deleted: list[str] = []
    real_delete = m.delete
    m.delete = lambda p: deleted.append(p) or real_delete(p)  # type: ignore[method-assign]
    b = ClusterNode(sb, "node2", True)
    await b.start(await b.claim("192.168.2.6", None, None), cache)
    handler = NodeHandler(LocalNode("node2", "10.6.0.1", "f00d::a06:0:0:1", 1350), "vxlan", FakeRoutes(),
                          FakeTunnelMap(), cache)
    await b.start_datapath(handler, health_port=0)
    try:
        assert sorted(deleted) == ["10.9.0.1/32", "10.9.0.5/32", "192.168.9.9/32"]
        assert m.entries["10.6.0.3/32"] == (30002, 0) and m.entries["0.0.0.0/0"][0] == 2
        assert m.entries["192.168.1.5/32"] == (6, 0) and m.entries["10.5.0.1/32"] == (6, "192.168.1.5")
        assert m.entries["10.5.0.9/32"] == (30001, "192.168.1.5")
    finally:
        await b.close()
        await a.close()


async def test_cluster_node_lists_every_node(clients) -> None:
    """`cilium node list`'s /v1/cluster/nodes with a cluster store: every node, with its ranges."""
    sa, sb = await clients(), await clients()
    a, b = ClusterNode(sa, "node1", True), ClusterNode(sb, "node2", True)
    na, nb = await a.claim("192.168.1.5", None, None), await b.claim("192.168.2.5", None, None)
    await a.start(na, IPCache(sa, None))
    await b.start(nb, IPCache(sb, None))
    try:
        await until(lambda: len(a.nodes()["nodes-added"]) == 2)
        status = a.nodes()
        assert status["self"] == "node1"
        by_name = {n["name"]: n["primary-address"] for n in status["nodes-added"]}
        assert by_name["node2"]["ipv4"] == {"enabled": True, "ip": "192.168.2.5", "alloc-range": "10.6.0.0/16"}
        assert by_name["node2"]["ipv6"]["alloc-range"] == "f00d::a06:0:0:0/96"
        assert by_name["node1"]["ipv4"]["alloc-range"] == "10.5.0.0/16"
    finally:
        await a.close()
        await b.close()


async def test_remote_entries_never_displace_local_ones(tmp_path) -> None:
    """A remote record cannot take a local endpoint's or the host's entry; a CIDR rule
    does not take a remote endpoint's; a remote entry gone falls back to its CIDR identity."""
    store = SQLiteBackend(str(tmp_path / "node.db"))
    await store.connect()
    try:
        m = FakeIPCacheMap()
        cache = IPCache(store, m)
        await cache.start(["192.168.1.5"])
        cache.upsert_endpoint(1, ("10.5.0.2", None), 30001)
        cache.upsert_remote("10.5.0.2", 40000, "192.168.9.9")
        cache.upsert_remote("192.168.1.5", 40000, "192.168.9.9")
        assert m.entries["10.5.0.2/32"] == (30001, 0) and m.entries["192.168.1.5/32"] == (1, 0)

        cache.upsert_remote("10.9.0.3", 40001, "192.168.9.9")
        await cache.allocate_cidrs({"10.9.0.3/32", "10.9.0.0/16"})
        assert m.entries["10.9.0.3/32"] == (40001, "192.168.9.9")
        assert m.entries["10.9.0.0/16"][0] == cache.cidr_identities()["10.9.0.0/16"]
        cache.delete_remote("10.9.0.3")
        assert m.entries["10.9.0.3/32"] == (cache.cidr_identities()["10.9.0.3/32"], 0)
        cache.upsert_remote("f00d::a09:0:0:3", 40001, "fd00::9")  # IPv6 host: no tunnel endpoint in the map
        assert m.entries["f00d::a09:0:0:3/128"] == (40001, 0)
    finally:
        await store.close()


async def test_registry_relists_after_lost_history(clients, tmp_path) -> None:
    """The store dropped history the watch still needed (as etcd compaction does) and a
    node left meanwhile: the watch fails, the view is re-listed and the leave reported."""
    sa, sb = await clients(), await clients()
    ra, rb = registry(sa, "node1", "192.168.1.5"), registry(sb, "node2", "192.168.2.6")
    seen = Recorder()
    ra.subscribe(seen)
    await rb.start()
    await ra.start()
    try:
        await until(lambda: ra.get("node2") is not None)
        await rb.close()
        # node2's record goes and the change log with it, in one transaction.
        conn = sqlite3.connect(str(tmp_path / "kvstore.db"), isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("DELETE FROM kv WHERE key = ?", (f"{keys.NODES}default/node2",))
        conn.execute("INSERT INTO changes(type, key, value, ts) VALUES ('put', 'unrelated', x'00', 0)")
        conn.execute("DELETE FROM changes")
        conn.execute("COMMIT")
        conn.close()
        await until(lambda: ("left", "node2") in seen.events)
        assert [n.name for n in ra.nodes()] == ["node1"]
    finally:
        await ra.close()


async def test_shared_store_flush_waits_for_every_write(clients) -> None:
    """After flush() every queued write is in the store, the one in flight included:
    100 keys set at once, then 50 of them given up."""
    from docker_cilium.kvstore.store import SharedStore

    class Quiet:
        def on_update(self, name: str, value: bytes) -> None: ...
        def on_delete(self, name: str) -> None: ...

    backend = await clients()
    put = backend.put

    async def slow_put(key: str, value: bytes, *, lease: bool = False) -> None:
        await asyncio.sleep(0.01)  # a store with a round-trip: writes are in flight for a while
        await put(key, value, lease=lease)
    backend.put = slow_put  # type: ignore[method-assign]
    store = SharedStore(backend, "test/shared/", Quiet())
    await store.start()
    try:
        store.set_local("first", b"1")
        await asyncio.sleep(0)  # its write starts: nothing queued, one in flight
        await store.flush()
        assert await backend.get("test/shared/first") == b"1"
        store.set_local("first", None)
        for i in range(100):
            store.set_local(f"k{i}", b"v%d" % i)
        await store.flush()
        assert len(await backend.get_prefix("test/shared/")) == 100
        for i in range(50):
            store.set_local(f"k{i}", None)
        await store.flush()
        assert sorted(await backend.get_prefix("test/shared/")) == sorted(f"test/shared/k{i}" for i in range(50, 100))
        assert sorted(store.local()) == sorted(f"k{i}" for i in range(50, 100))
    finally:
        await store.close()


async def test_a_second_host_with_the_same_name_is_refused(clients) -> None:
    """Two hosts called the same would share one record and one range: the second is refused
    (409, naming the first's address); the same host coming back (same address) is not."""
    from docker_cilium.node.registry import NodeNameTaken

    sa, sb = await clients(), await clients()
    a = ClusterNode(sa, "debian", True)
    na = await a.claim("192.168.1.5", None, None)
    await a.start(na, IPCache(sa, None))
    try:
        b = ClusterNode(sb, "debian", True)
        with pytest.raises(NodeNameTaken, match=r"in use by the node at 192\.168\.1\.5.*--node-name") as e:
            await b.claim("192.168.2.5", None, None)
        assert e.value.status == 409
        assert await RangeClaims(sb, "x").claims() == {str(na.ipv4_range): "debian"}  # nothing claimed
        again = await ClusterNode(sb, "debian", True).claim("192.168.1.5", None, None)
        assert again.ipv4_range == na.ipv4_range
    finally:
        await a.close()
