"""Networks and endpoints that would collide with the node or each other are refused.

The plugin app runs around the agent's real EndpointManager, IPAM and
Regenerator as ``UnitDaemon`` wires them (only netlink is faked), so a refusal
here is the one dockerd gets, and a refused call must leave every existing
endpoint, route and host address as it was.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from docker_cilium.endpoint.networks import NET_PREFIX
from docker_cilium.endpoint.network import Network
from tests.unit.unit_daemon import ENDPOINTS, NETWORK, NODE

DOCKER_NET = "d" * 64
ROUTER4 = str(NODE.router4)  # 10.2.0.1


@pytest.fixture
def agent(daemon, daemon_plugin):
    daemon.endpoints.links.host_addresses.add(ROUTER4)  # as ensure_host_device leaves cilium_host
    return daemon_plugin, daemon


async def call(client, method: str, body: dict) -> tuple[int, dict]:
    resp = await client.post(f"/{method}", data=json.dumps(body) + "\n")
    return resp.status, json.loads(await resp.text())


async def create_docker_network(client, net_id: str, pool: str, gateway: str, v6: tuple[str, str] | None = None):
    return await call(client, "NetworkDriver.CreateNetwork", {
        "NetworkID": net_id, "Options": {"com.docker.network.enable_ipv6": v6 is not None,
                                         "com.docker.network.generic": {}},
        "IPv4Data": [{"AddressSpace": "LocalDefault", "Pool": pool, "Gateway": gateway}],
        "IPv6Data": [{"AddressSpace": "LocalDefault", "Pool": v6[0], "Gateway": v6[1]}] if v6 else []})


async def create_endpoint(client, net_id: str, ep_id: str, address: str, address6: str = ""):
    return await call(client, "NetworkDriver.CreateEndpoint", {
        "NetworkID": net_id, "EndpointID": ep_id,
        "Interface": {"Address": address, "AddressIPv6": address6, "MacAddress": ""}})


def snapshot(daemon) -> tuple:
    mgr = daemon.endpoints
    return (sorted(mgr.networks), sorted(mgr.endpoints), dict(mgr.links.links), dict(mgr.links.routes),
            set(mgr.links.host_addresses), daemon.ipam.allocations())


@pytest.mark.parametrize("pool,gateway,needle", [
    ("10.2.0.0/24", "10.2.0.1/24", "gateway 10.2.0.1 is this node's router address"),
    ("10.2.5.0/24", "10.2.5.1/24", "subnet 10.2.5.0/24 overlaps this node's IPv4 range 10.2.0.0/16"),
    ("10.0.0.0/8", "10.255.0.1/8", "overlaps this node's IPv4 range 10.2.0.0/16"),
])
async def test_docker_ipam_network_inside_node_range_refused(agent, pool, gateway, needle):
    client, daemon = agent
    before = snapshot(daemon)
    status, reply = await create_docker_network(client, DOCKER_NET, pool, gateway)
    assert status == 409, reply
    assert needle in reply["Err"] and "--ipam-driver cilium" in reply["Err"], reply
    assert snapshot(daemon) == before
    assert await daemon.store.get(NET_PREFIX + DOCKER_NET) is None


async def test_docker_ipam_ipv6_pool_inside_node_range_refused(agent):
    client, daemon = agent
    status, reply = await create_docker_network(client, DOCKER_NET, "172.18.0.0/16", "172.18.0.1/16",
                                                v6=("f00d::a02:0:0:0/112", "f00d::a02:0:0:1/112"))
    assert status == 409 and "gateway f00d::a02:0:0:1 is this node's router address" in reply["Err"], reply
    status, reply = await create_docker_network(client, DOCKER_NET, "172.18.0.0/16", "172.18.0.1/16",
                                                v6=("f00d::a02:0:1:0/112", "f00d::a02:0:1:1/112"))
    assert status == 409 and "overlaps this node's IPv6 range f00d::a02:0:0:0/96" in reply["Err"], reply
    assert DOCKER_NET not in daemon.endpoints.networks


async def test_overlapping_docker_ipam_subnets_refused(agent):
    client, daemon = agent
    status, _ = await create_docker_network(client, DOCKER_NET, "172.18.0.0/16", "172.18.0.1/16")
    assert status == 200
    before = snapshot(daemon)
    status, reply = await create_docker_network(client, "e" * 64, "172.18.128.0/17", "172.18.128.1/17")
    assert status == 409, reply
    assert reply["Err"] == f"subnet 172.18.128.0/17 overlaps subnet 172.18.0.0/16 of network {DOCKER_NET[:12]}"
    assert snapshot(daemon) == before
    # A disjoint subnet is fine, and networks on our IPAM share the node range as before.
    assert (await create_docker_network(client, "f" * 64, "172.19.0.0/16", "172.19.0.1/16"))[0] == 200
    status, reply = await call(client, "NetworkDriver.CreateNetwork", {
        "NetworkID": "c" * 64, "Options": {},
        "IPv4Data": [{"AddressSpace": "CiliumLocal", "Pool": "10.2.5.0/24", "Gateway": f"{ROUTER4}/32"}]})
    assert status == 200, reply


@pytest.mark.parametrize("ipv4,ipv6,needle", [
    ("10.2.0.2/32", "", "address 10.2.0.2 is already held by endpoint 1001"),
    ("10.2.0.77/32", "f00d::a02:0:0:3ea/128", "address f00d::a02:0:0:3ea is already held by endpoint 1002"),
    (f"{ROUTER4}/32", "", f"address {ROUTER4} is this node's router address"),
])
async def test_create_endpoint_with_held_address_refused(agent, ipv4, ipv6, needle):
    """The second endpoint would replace the holder's route and endpoint-map entry."""
    client, daemon = agent
    before = snapshot(daemon)
    status, reply = await create_endpoint(client, NETWORK, "9" * 64, ipv4, ipv6)
    assert status == 409, reply
    assert needle in reply["Err"], reply
    assert snapshot(daemon) == before
    holder = daemon.endpoint(1001)
    assert (holder.ipv4, holder.state.value) == (ENDPOINTS[0][3], "ready")


async def test_duplicate_address_across_docker_ipam_networks(agent):
    """Two Docker-IPAM networks dockerd believes disjoint can still name one address."""
    client, daemon = agent
    assert (await create_docker_network(client, DOCKER_NET, "172.18.0.0/16", "172.18.0.1/16"))[0] == 200
    assert (await create_endpoint(client, DOCKER_NET, "a" * 64, "172.18.0.2/16"))[0] == 200
    first = daemon.endpoints.endpoints["a" * 64]
    before = snapshot(daemon)
    status, reply = await create_endpoint(client, DOCKER_NET, "b" * 64, "172.18.0.2/16")
    assert status == 409, reply
    assert reply["Err"] == f"address 172.18.0.2 is already held by endpoint {first.id} (Docker endpoint aaaaaaaaaaaa)"
    assert snapshot(daemon) == before
    assert daemon.endpoints.links.routes[first.ifindex][0] == "172.18.0.2"
    status, reply = await create_endpoint(client, DOCKER_NET, "b" * 64, "172.18.0.1/16")
    assert status == 409 and f"gateway of network {DOCKER_NET[:12]}" in reply["Err"], reply
    # Once the holder is gone the address is free again.
    assert (await call(client, "NetworkDriver.DeleteEndpoint", {"NetworkID": DOCKER_NET, "EndpointID": "a" * 64}))[0] == 200
    assert (await create_endpoint(client, DOCKER_NET, "b" * 64, "172.18.0.2/16"))[0] == 200


async def test_concurrent_creates_of_one_address(agent):
    client, daemon = agent
    assert (await create_docker_network(client, DOCKER_NET, "172.18.0.0/16", "172.18.0.1/16"))[0] == 200
    replies = await asyncio.gather(*(create_endpoint(client, DOCKER_NET, c * 64, "172.18.0.9/16") for c in "abc"))
    assert sorted(status for status, _ in replies) == [200, 409, 409], replies
    holders = [ep for ep in daemon.endpoints.endpoints.values() if ep.ipv4 == "172.18.0.9"]
    assert len(holders) == 1


async def test_network_delete_never_removes_router_address(agent):
    """A record from before the check (gateway = router) is restored; deleting it keeps the router."""
    client, daemon = agent
    legacy = Network(id=DOCKER_NET, ipv6=False, cilium_ipam=False, gateway4=ROUTER4, pool4="10.2.0.0/24")
    await daemon.store.put(NET_PREFIX + legacy.id, json.dumps(legacy.to_record()).encode())
    daemon.endpoints.networks.clear()
    daemon.endpoints.endpoints.clear()
    await daemon.endpoints.restore()
    assert DOCKER_NET in daemon.endpoints.networks
    status, _ = await call(client, "NetworkDriver.DeleteNetwork", {"NetworkID": DOCKER_NET})
    assert status == 200
    assert ROUTER4 in daemon.endpoints.links.host_addresses
    assert DOCKER_NET not in daemon.endpoints.networks
