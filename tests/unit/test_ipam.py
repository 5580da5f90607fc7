"""IPAM: ranges as Cilium derived them, and no double allocation across restarts."""

from __future__ import annotations

import ipaddress

import pytest

from docker_cilium.errors import AllocationFailed, Conflict
from docker_cilium.ipam.allocator import IPAM
from docker_cilium.ipam.ranges import NodeAddressing, ipv4_range_for, ipv6_range_for
from docker_cilium.kvstore.sqlite import SQLiteBackend


def test_node_ranges_match_cilium():
    v4 = ipv4_range_for("192.168.33.15")
    assert str(v4) == "10.15.0.0/16"
    assert str(ipv6_range_for(v4)) == "f00d::a0f:0:0:0/96"
    node = NodeAddressing.derive("192.0.2.77")
    assert str(node.router4) == "10.77.0.1" and str(node.router6) == "f00d::a4d:0:0:1"
    assert str(NodeAddressing.derive("1.2.3.4", "10.200.0.0/16").ipv6_range) == "f00d::ac8:0:0:0/96"


async def test_allocations_survive_restart_and_crash(tmp_path):
    path = str(tmp_path / "node.db")
    node = NodeAddressing.derive("192.0.2.9")
    store = SQLiteBackend(path)
    await store.connect()
    ipam = IPAM(store, node)
    pool = ipam.request_pool(False)
    got = [await ipam.allocate(pool, "t") for _ in range(5)]
    assert got[0] == ipaddress.ip_address("10.9.0.2")
    assert len(set(got)) == 5
    # No close(): simulate kill -9 by opening a second store on the same file.
    store2 = SQLiteBackend(path)
    await store2.connect()
    ipam2 = IPAM(store2, node)
    assert await ipam2.restore() == 5
    more = [await ipam2.allocate(pool, "t") for _ in range(5)]
    assert not set(more) & set(got)
    with pytest.raises(Conflict, match="already allocated"):
        await ipam2.allocate(pool, "t", str(got[0]))
    await store2.close()
    await store.close()


async def test_exhaustion_is_a_clear_error(tmp_path):
    store = SQLiteBackend(str(tmp_path / "n.db"))
    await store.connect()
    ipam = IPAM(store, NodeAddressing.derive("192.0.2.9"))
    pool = ipam.request_pool(False, "10.9.4.0/30")
    assert str(await ipam.allocate(pool, "t")) == "10.9.4.0"
    for _ in range(3):
        await ipam.allocate(pool, "t")
    with pytest.raises(AllocationFailed, match="no free address left in 10.9.4.0/30"):
        await ipam.allocate(pool, "t")
    await store.close()
