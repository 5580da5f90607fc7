"""Bad input gets a precise non-200 error, and the plugin keeps serving."""

from __future__ import annotations

import json

import pytest

NET = "n" * 64
EP = "e" * 64


async def call(client, method: str, body) -> tuple[int, dict]:
    data = body if isinstance(body, (bytes, str)) else json.dumps(body) + "\n"
    resp = await client.post(f"/{method}", data=data)
    return resp.status, json.loads(await resp.text())


async def create_cilium_network(client, ipv6: bool = True, generic: dict | None = None) -> None:
    status, pool4 = await call(client, "IpamDriver.RequestPool",
                               {"AddressSpace": "CiliumLocal", "Pool": "", "SubPool": "", "Options": {}, "V6": False})
    assert status == 200
    v6data = []
    if ipv6:
        status, pool6 = await call(client, "IpamDriver.RequestPool",
                                   {"AddressSpace": "CiliumLocal", "Pool": "::1/112", "SubPool": "", "Options": {},
                                    "V6": True})
        v6data = [{"AddressSpace": "CiliumLocal", "Gateway": pool6["Data"]["com.docker.network.gateway"],
                   "Pool": pool6["Pool"]}]
    status, reply = await call(client, "NetworkDriver.CreateNetwork", {
        "NetworkID": NET,
        "Options": {"com.docker.network.enable_ipv6": ipv6, "com.docker.network.generic": generic or {}},
        "IPv4Data": [{"AddressSpace": "CiliumLocal", "Gateway": pool4["Data"]["com.docker.network.gateway"],
                      "Pool": pool4["Pool"]}],
        "IPv6Data": v6data,
    })
    assert status == 200, reply


@pytest.mark.parametrize("method,body,status,needle", [
    ("NetworkDriver.CreateNetwork", b"{not json", 400, "malformed JSON"),
    ("NetworkDriver.CreateNetwork", b"", 400, "request body is empty"),
    ("NetworkDriver.CreateNetwork", [1, 2], 400, "must be a JSON object"),
    ("NetworkDriver.CreateNetwork", {"Options": {}}, 400, "NetworkID is required"),
    ("NetworkDriver.CreateNetwork", {"NetworkID": 7}, 400, "NetworkID must be a string"),
    ("NetworkDriver.CreateNetwork", {"NetworkID": NET, "IPv4Data": [{"Gateway": "nope"}]}, 400,
     "IPv4Data[0].Gateway"),
    ("NetworkDriver.CreateNetwork", {"NetworkID": NET, "Options": "x"}, 400, "Options must be an object"),
    ("NetworkDriver.CreateEndpoint", {"NetworkID": NET, "EndpointID": EP, "Interface": {"MacAddress": "zz"}}, 400,
     "Interface.MacAddress"),
    ("NetworkDriver.CreateEndpoint", {"NetworkID": NET, "EndpointID": EP,
                                      "Interface": {"Address": "10.77.0.9"}}, 400, "prefix length"),
    ("NetworkDriver.Join", {"NetworkID": NET, "EndpointID": ""}, 400, "EndpointID must not be empty"),
    ("NetworkDriver.Join", {"NetworkID": NET, "EndpointID": EP, "SandboxKey": "/x"}, 404, "not found"),
    ("NetworkDriver.EndpointOperInfo", {"NetworkID": NET, "EndpointID": EP}, 404, "not found"),
    ("NetworkDriver.CreateEndpoint", {"NetworkID": NET, "EndpointID": EP, "Interface": {}}, 404,
     "network " + NET + " not found"),
    ("NetworkDriver.NoSuchMethod", {}, 404, "not implemented"),
    ("IpamDriver.RequestPool", {"V6": "yes"}, 400, "V6 must be a boolean"),
    ("IpamDriver.RequestPool", {"AddressSpace": "Other", "V6": False}, 400, "unknown address space"),
    ("IpamDriver.RequestPool", {"Pool": "192.168.7.0/24", "V6": False}, 400, "outside this node's IPv4 range"),
    ("IpamDriver.RequestAddress", {"PoolID": "Bogus", "Address": ""}, 400, "unknown pool"),
    ("IpamDriver.RequestAddress", {"PoolID": "CiliumPoolv4", "Address": "10.78.0.5"}, 400, "outside pool"),
    ("IpamDriver.RequestAddress", {"PoolID": "CiliumPoolv4", "Address": "10.77.0.0"}, 400, "reserved"),
    ("IpamDriver.RequestAddress", {"PoolID": "CiliumPoolv4", "Address": "hello"}, 400, "not an IP address"),
    ("IpamDriver.ReleaseAddress", {"PoolID": "CiliumPoolv4"}, 400, "Address is required"),
])
async def test_bad_requests(plugin, method, body, status, needle):
    client, mgr, links, ipam = plugin
    got_status, reply = await call(client, method, body)
    assert got_status == status, reply
    assert needle in reply["Err"], reply
    if method.startswith("IpamDriver."):
        assert reply["Error"] == reply["Err"]
    # ... and the plugin still serves.
    ok, caps = await call(client, "NetworkDriver.GetCapabilities", b"")
    assert ok == 200 and caps == {"Scope": "local", "ConnectivityScope": "local"}
    assert mgr.endpoints == {} and ipam.allocations() == {}


async def test_empty_body_methods(plugin):
    client, *_ = plugin
    for method, want in [
        ("Plugin.Activate", {"Implements": ["NetworkDriver", "IpamDriver"]}),
        ("IpamDriver.GetCapabilities", {"RequiresMACAddress": False, "RequiresRequestReplay": False}),
        ("IpamDriver.GetDefaultAddressSpaces",
         {"LocalDefaultAddressSpace": "CiliumLocal", "GlobalDefaultAddressSpace": "CiliumGlobal"}),
    ]:
        status, reply = await call(client, method, b"")
        assert status == 200 and reply == want


async def test_requested_ip_is_honoured_and_never_doubled(plugin):
    client, mgr, links, ipam = plugin
    status, reply = await call(client, "IpamDriver.RequestAddress", {"PoolID": "CiliumPoolv4", "Address": "10.77.3.4"})
    assert status == 200 and reply == {"Address": "10.77.3.4/32", "Data": {}}
    status, reply = await call(client, "IpamDriver.RequestAddress", {"PoolID": "CiliumPoolv4", "Address": "10.77.3.4"})
    assert status == 409 and "already allocated" in reply["Error"]
    # Release is idempotent; afterwards the address can be had again.
    for _ in range(2):
        status, _r = await call(client, "IpamDriver.ReleaseAddress", {"PoolID": "CiliumPoolv4", "Address": "10.77.3.4"})
        assert status == 200
    status, reply = await call(client, "IpamDriver.RequestAddress", {"PoolID": "CiliumPoolv4", "Address": "10.77.3.4"})
    assert status == 200


async def test_subnet_inside_node_range_and_ip_range(plugin):
    client, *_ = plugin
    status, pool = await call(client, "IpamDriver.RequestPool",
                              {"AddressSpace": "CiliumLocal", "Pool": "10.77.5.0/24", "SubPool": "10.77.5.128/25",
                               "Options": {}, "V6": False})
    assert status == 200
    assert pool["Pool"] == "10.77.5.0/24"
    assert pool["PoolID"] == "CiliumPoolv4:10.77.5.0/24:10.77.5.128/25"
    status, reply = await call(client, "IpamDriver.RequestAddress", {"PoolID": pool["PoolID"], "Address": ""})
    assert reply["Address"] == "10.77.5.128/32"
    status, reply = await call(client, "IpamDriver.RequestAddress", {"PoolID": pool["PoolID"], "Address": "10.77.5.7"})
    assert status == 400 and "outside pool 10.77.5.128/25" in reply["Error"]
    # A v6 subnet inside the node range, with ':' inside the pool ID.
    status, pool6 = await call(client, "IpamDriver.RequestPool",
                               {"AddressSpace": "CiliumLocal", "Pool": "f00d::a4d:0:0:0/112", "V6": True})
    assert status == 200 and pool6["PoolID"] == "CiliumPoolv6:f00d::a4d:0:0:0/112"
    status, reply = await call(client, "IpamDriver.RequestAddress", {"PoolID": pool6["PoolID"], "Address": ""})
    assert reply["Address"] == "f00d::a4d:0:0:2/128"


async def test_endpoint_lifecycle_and_mtu_option(plugin):
    client, mgr, links, ipam = plugin
    await create_cilium_network(client, ipv6=True, generic={"com.docker.network.driver.mtu": "1300"})
    _, a4 = await call(client, "IpamDriver.RequestAddress", {"PoolID": "CiliumPoolv4", "Address": "", "Options": None})
    _, a6 = await call(client, "IpamDriver.RequestAddress", {"PoolID": "CiliumPoolv6", "Address": "", "Options": None})
    status, reply = await call(client, "NetworkDriver.CreateEndpoint", {
        "NetworkID": NET, "EndpointID": EP,
        "Interface": {"Address": a4["Address"], "AddressIPv6": a6["Address"], "MacAddress": ""}, "Options": {}})
    assert status == 200
    ep = mgr.endpoints[EP]
    assert reply == {"Interface": {"MacAddress": ep.mac}}
    assert ep.mtu == 1300
    assert ep.id == int(a6["Address"].split(":")[-1].split("/")[0], 16)  # Cilium 1.0: low 16 bits of IPv6
    status, join = await call(client, "NetworkDriver.Join",
                              {"NetworkID": NET, "EndpointID": EP, "SandboxKey": "/var/run/docker/netns/x",
                               "Options": None})
    assert status == 200
    assert join["Gateway"] == "10.77.0.1" and join["GatewayIPv6"] == "f00d::a4d:0:0:1"
    assert {"Destination": "10.77.0.1/32", "RouteType": 1, "NextHop": ""} in join["StaticRoutes"]
    assert {"Destination": "f00d::a4d:0:0:1/128", "RouteType": 1, "NextHop": ""} in join["StaticRoutes"]
    # Creating the same endpoint twice is refused, not silently duplicated.
    status, reply = await call(client, "NetworkDriver.CreateEndpoint", {
        "NetworkID": NET, "EndpointID": EP, "Interface": {"Address": "10.77.0.99/32"}})
    assert status == 409
    status, _ = await call(client, "NetworkDriver.DeleteEndpoint", {"NetworkID": NET, "EndpointID": EP})
    assert status == 200 and EP not in mgr.endpoints and links.links == {}
    # dockerd re-deleting after a crash is fine.
    status, _ = await call(client, "NetworkDriver.DeleteEndpoint", {"NetworkID": NET, "EndpointID": EP})
    assert status == 200


async def test_bad_mtu_option(plugin):
    client, mgr, *_ = plugin
    status, reply = await call(client, "NetworkDriver.CreateNetwork", {
        "NetworkID": NET, "Options": {"com.docker.network.generic": {"com.docker.network.driver.mtu": "big"}},
        "IPv4Data": [{"AddressSpace": "CiliumLocal", "Gateway": "10.77.0.1/32", "Pool": "0.0.0.0/0"}]})
    assert status == 400 and "com.docker.network.driver.mtu" in reply["Err"]
    assert mgr.networks == {}


async def test_docker_default_ipam_network(plugin):
    client, mgr, links, ipam = plugin
    status, _ = await call(client, "NetworkDriver.CreateNetwork", {
        "NetworkID": NET, "Options": {"com.docker.network.enable_ipv6": False, "com.docker.network.generic": {}},
        "IPv4Data": [{"AddressSpace": "LocalDefault", "Gateway": "172.18.0.1/16", "Pool": "172.18.0.0/16"}],
        "IPv6Data": []})
    assert status == 200
    assert links.host_addresses == {"172.18.0.1"}
    status, _ = await call(client, "NetworkDriver.CreateEndpoint", {
        "NetworkID": NET, "EndpointID": EP, "Interface": {"Address": "172.18.0.2/16", "AddressIPv6": "",
                                                          "MacAddress": ""}})
    assert status == 200
    _, join = await call(client, "NetworkDriver.Join", {"NetworkID": NET, "EndpointID": EP, "SandboxKey": "/k"})
    assert join["Gateway"] == "172.18.0.1"
    assert join["StaticRoutes"] == [{"Destination": "172.18.0.1/32", "RouteType": 1, "NextHop": ""}]
    assert links.routes[mgr.endpoints[EP].ifindex][0] == "172.18.0.2"
    await call(client, "NetworkDriver.DeleteEndpoint", {"NetworkID": NET, "EndpointID": EP})
    await call(client, "NetworkDriver.DeleteNetwork", {"NetworkID": NET})
    assert links.host_addresses == set()
