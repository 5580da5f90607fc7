"""The node handler's wanted state and its worker, with a fake tunnel map and route applier.

The real route code (pyroute2 on a real kernel) is tests/privileged/test_nodehandler_routes.py.
"""

from __future__ import annotations

import asyncio
import ipaddress

import pytest

from docker_cilium.datapath.nodehandler import LocalNode, NodeHandler, NodeRoute
from docker_cilium.identity.reserved import REMOTE_NODE
from docker_cilium.node.types import INTERNAL_IP, Node

LOCAL = LocalNode("node1", "10.7.0.1", "f00d::a07:0:0:1", 1350, ("10.7.0.0/16", "f00d::a07:0:0:0/96", "192.168.1.7"))


def node(name: str, ip: str, v4: str, v6: str | None = None) -> Node:
    net4 = ipaddress.IPv4Network(v4)
    return Node(name=name, addresses=((INTERNAL_IP, ip),), ipv4_alloc_cidr=net4,
                ipv6_alloc_cidr=ipaddress.IPv6Network(v6) if v6 else None,
                ipv4_health_ip=str(net4.network_address + 1))


class FakeTunnelMap:
    def __init__(self, entries: dict[str, str] | None = None) -> None:
        self.entries = dict(entries or {})
        self.calls: list[tuple[str, str]] = []

    def upsert(self, cidr: str, endpoint_ipv4: str) -> None:
        self.calls.append(("upsert", cidr))
        self.entries[cidr] = endpoint_ipv4

    def delete(self, cidr: str) -> None:
        self.calls.append(("delete", cidr))
        self.entries.pop(cidr, None)

    def dump(self) -> dict[str, str]:
        return dict(self.entries)


class FakeRoutes:
    """The kernel's main table, restricted to the handler's protocol."""

    def __init__(self, owned: list[str] | None = None) -> None:
        self.table: dict[str, NodeRoute | None] = {d: None for d in owned or []}
        self.calls: list[tuple[str, str]] = []
        self.fail = 0  # the next N calls raise

    def _maybe_fail(self) -> None:
        if self.fail:
            self.fail -= 1
            raise OSError("netlink: Network is unreachable")

    def replace(self, route: NodeRoute) -> None:
        self._maybe_fail()
        self.calls.append(("replace", route.dst))
        self.table[route.dst] = route

    def delete(self, dst: str) -> None:
        self._maybe_fail()
        self.calls.append(("delete", dst))
        self.table.pop(dst, None)

    def owned(self) -> list[str]:
        return list(self.table)


class FakeIPCache:
    def __init__(self) -> None:
        self.entries: dict[str, tuple[int, str | None]] = {}

    def upsert_remote(self, ip: str, identity: int, tunnel_endpoint: str | None) -> None:
        self.entries[ip] = (identity, tunnel_endpoint)

    def delete_remote(self, ip: str) -> None:
        self.entries.pop(ip, None)


def handler(tunnel: str = "vxlan", routes: FakeRoutes | None = None, tmap: FakeTunnelMap | None = None
            ) -> tuple[NodeHandler, FakeRoutes, FakeTunnelMap, FakeIPCache]:
    routes, tmap, ipc = routes or FakeRoutes(), tmap or FakeTunnelMap(), FakeIPCache()
    return NodeHandler(LOCAL, tunnel, routes, tmap, ipc, retry_s=0.05), routes, tmap, ipc


N2 = node("node2", "192.168.2.7", "10.8.0.0/16", "f00d::a08:0:0:0/96")
N3 = node("node3", "172.18.0.7", "10.9.0.0/16")


async def settle(h: NodeHandler) -> None:
    await asyncio.wait_for(h.settled(), 5)


async def test_join_programs_routes_tunnel_and_ipcache_for_other_nodes_only() -> None:
    h, routes, tmap, ipc = handler()
    await h.start()
    try:
        h.node_joined(node("node1", "192.168.1.7", "10.7.0.0/16"))  # ourselves: nothing
        h.node_joined(N2)
        await settle(h)
        assert routes.table == {
            "10.8.0.0/16": NodeRoute("10.8.0.0/16", "10.7.0.1", "cilium_host", "10.7.0.1", 1350),
            "f00d::a08:0:0:0/96": NodeRoute("f00d::a08:0:0:0/96", None, "cilium_host", None, 1350)}
        assert tmap.entries == {"10.8.0.0/16": "192.168.2.7", "f00d::a08:0:0:0/96": "192.168.2.7"}
        assert ipc.entries == {"192.168.2.7": (REMOTE_NODE, None), "10.8.0.1": (REMOTE_NODE, "192.168.2.7")}
    finally:
        await h.close()


async def test_update_replaces_in_place_and_a_rejoin_with_the_same_ranges_does_not_flap() -> None:
    h, routes, tmap, ipc = handler()
    await h.start()
    try:
        h.node_joined(N2)
        await settle(h)
        routes.calls.clear()
        tmap.calls.clear()
        # restarted node2: same record again (left and joined between two passes)
        h.node_left(N2)
        h.node_joined(N2)
        await settle(h)
        assert routes.calls == [] and tmap.calls == []
        assert ipc.entries["192.168.2.7"] == (REMOTE_NODE, None)
        # node2 moved to another address: the tunnel entries are rewritten, never deleted
        moved = node("node2", "192.168.2.8", "10.8.0.0/16", "f00d::a08:0:0:0/96")
        h.node_updated(N2, moved)
        await settle(h)
        assert ("delete", "10.8.0.0/16") not in tmap.calls + routes.calls
        assert tmap.entries["10.8.0.0/16"] == "192.168.2.8"
        assert "192.168.2.7" not in ipc.entries and ipc.entries["192.168.2.8"] == (REMOTE_NODE, None)
        assert routes.calls == []  # the route does not name the node's address in tunnel mode
    finally:
        await h.close()


async def test_leave_removes_routes_tunnel_and_ipcache() -> None:
    h, routes, tmap, ipc = handler()
    await h.start()
    try:
        h.node_joined(N2)
        h.node_joined(N3)
        await settle(h)
        h.node_left(N2)
        await settle(h)
        assert set(routes.table) == {"10.9.0.0/16"} and set(tmap.entries) == {"10.9.0.0/16"}
        assert set(ipc.entries) == {"172.18.0.7", "10.9.0.1"}
    finally:
        await h.close()


async def test_start_sweeps_what_no_known_node_owns() -> None:
    """An earlier run left node4's route and tunnel entries (node4 left while we were down)."""
    routes = FakeRoutes(["10.10.0.0/16", "10.8.0.0/16"])
    tmap = FakeTunnelMap({"10.10.0.0/16": "10.0.0.4", "f00d::a0a:0:0:0/96": "10.0.0.4"})
    h, routes, tmap, _ = handler(routes=routes, tmap=tmap)
    h.node_joined(N2)  # the registry's first view, before start
    await h.start()
    try:
        await settle(h)
        assert set(routes.table) == {"10.8.0.0/16", "f00d::a08:0:0:0/96"}
        assert routes.table["10.8.0.0/16"] is not None  # found in the kernel, written again
        assert tmap.entries == {"10.8.0.0/16": "192.168.2.7", "f00d::a08:0:0:0/96": "192.168.2.7"}
    finally:
        await h.close()


async def test_failures_are_retried_not_raised() -> None:
    h, routes, tmap, _ = handler()
    routes.fail = 3
    await h.start()
    try:
        h.node_joined(N2)  # does not raise into the registry
        await settle(h)
        assert set(routes.table) == {"10.8.0.0/16", "f00d::a08:0:0:0/96"} and h.failures >= 1
    finally:
        await h.close()


async def test_direct_routing_without_the_tunnel() -> None:
    h, routes, tmap, ipc = handler("disabled", tmap=FakeTunnelMap({"10.8.0.0/16": "192.168.2.7"}))
    h.node_joined(N2)
    await h.start()
    try:
        await settle(h)
        # no IPv6 node address: no IPv6 route; no tunnel entries (a stale one is swept)
        assert routes.table == {"10.8.0.0/16": NodeRoute("10.8.0.0/16", "192.168.2.7")}
        assert tmap.entries == {}
        assert ipc.entries["10.8.0.1"] == (REMOTE_NODE, None)
    finally:
        await h.close()


@pytest.mark.parametrize("bad", [
    node("evil", "192.168.9.9", "0.0.0.0/0"),  # would replace the default route, tunnel everything
    node("evil", "192.168.9.9", "10.7.0.0/16"),  # our own range
    node("evil", "192.168.9.9", "10.7.128.0/17"),  # part of it
    node("evil", "192.168.9.9", "192.168.0.0/16"),  # holds our node address (the underlay)
    node("evil", "192.168.9.9", "10.11.0.0/16", "::/0"),
    node("evil", "192.168.9.9", "10.8.0.0/16"),  # node2's range
    node("evil", "10.7.0.9", "10.11.0.0/16"),  # a node address inside our range
    Node(name="evil", addresses=((INTERNAL_IP, "192.168.9.9"),), ipv4_alloc_cidr=ipaddress.IPv4Network("10.11.0.0/16"),
         ipv4_health_ip="192.168.1.7"),  # our node address as its health address
], ids=["default", "ours", "part-of-ours", "underlay", "ipv6-default", "node2s", "addr-in-ours", "health-is-us"])
async def test_a_record_claiming_what_is_not_its_own_is_refused(bad: Node) -> None:
    """A record written by a misbehaving agent (or by hand) gets no route, tunnel entry or ipcache entry."""
    h, routes, tmap, ipc = handler()
    await h.start()
    try:
        h.node_joined(N2)
        h.node_joined(bad)
        await settle(h)
        assert set(routes.table) == {"10.8.0.0/16", "f00d::a08:0:0:0/96"}
        assert tmap.entries == {"10.8.0.0/16": "192.168.2.7", "f00d::a08:0:0:0/96": "192.168.2.7"}
        assert set(ipc.entries) == {"192.168.2.7", "10.8.0.1"}
        assert h.status()["nodes"] == ["node2"]
    finally:
        await h.close()


async def test_a_refused_node_is_programmed_once_its_record_is_sound() -> None:
    """A node refused for another node's range gets it when that node leaves; a node that turns bad loses all."""
    h, routes, tmap, ipc = handler()
    await h.start()
    try:
        h.node_joined(N2)
        taker = node("node4", "192.168.4.4", "10.8.0.0/16")
        h.node_joined(taker)
        await settle(h)
        assert tmap.entries["10.8.0.0/16"] == "192.168.2.7"
        h.node_left(N2)
        await settle(h)
        assert tmap.entries == {"10.8.0.0/16": "192.168.4.4"} and set(routes.table) == {"10.8.0.0/16"}
        h.node_updated(taker, node("node4", "192.168.4.4", "0.0.0.0/0"))
        await settle(h)
        assert routes.table == {} and tmap.entries == {} and ipc.entries == {}
    finally:
        await h.close()


async def test_an_address_two_records_name_stays_until_both_left() -> None:
    """node2's host came back as node5 (same address, new name) while node2's record waits
    for its lease: node2 aging out must not take the address's remote-node entry."""
    h, routes, tmap, ipc = handler()
    await h.start()
    try:
        h.node_joined(N2)
        again = node("node5", "192.168.2.7", "10.12.0.0/16")
        h.node_joined(again)
        h.node_left(N2)
        await settle(h)
        assert ipc.entries["192.168.2.7"] == (REMOTE_NODE, None) and "10.8.0.1" not in ipc.entries
        h.node_left(again)
        assert ipc.entries == {}
    finally:
        await h.close()


def test_bad_tunnel_mode() -> None:
    with pytest.raises(ValueError, match="tunnel mode 'geneve'"):
        NodeHandler(LOCAL, "geneve", FakeRoutes(), None, FakeIPCache())
