"""The plugin socket's inputs that gave a 500 or were taken as given: MTU
options, nesting, pool IDs, endpoint addresses. Each gets a precise 4xx, no
state changes, and the plugin keeps serving (real manager and IPAM, fake
kernel: tests/unit/conftest.py)."""

from __future__ import annotations

import json

import pytest

from tests.unit.test_plugin_errors import EP, NET, call, create_cilium_network

MTU = "com.docker.network.driver.mtu"
V4_DATA = [{"AddressSpace": "CiliumLocal", "Gateway": "10.77.0.1/32", "Pool": "0.0.0.0/0"}]


def state(mgr, links, ipam) -> tuple:
    return sorted(mgr.networks), sorted(mgr.endpoints), dict(links.links), dict(links.routes), ipam.allocations()


async def assert_serving(client) -> None:
    status, caps = await call(client, "NetworkDriver.GetCapabilities", b"")
    assert status == 200 and caps["Scope"] == "local"


def network_body(mtu_json: str, ipv6: bool = False) -> bytes:
    """A CreateNetwork body with the MTU option spelled as raw JSON (Infinity, NaN...)."""
    return (f'{{"NetworkID": "{NET}", "IPv4Data": {json.dumps(V4_DATA)}, "IPv6Data": [], '
            f'"Options": {{"com.docker.network.enable_ipv6": {json.dumps(ipv6)}, '
            f'"com.docker.network.generic": {{"{MTU}": {mtu_json}}}}}}}').encode()


@pytest.mark.parametrize("mtu_json,needle", [
    ('"Infinity"', '"Infinity" is not a whole number of bytes (expected an integer in 68-65535)'),
    ('"NaN"', '"NaN" is not a whole number'),
    ("Infinity", "Infinity is not valid JSON"),
    ("-Infinity", "-Infinity is not valid JSON"),
    ("NaN", "NaN is not valid JSON"),
    ("1e400", "number 1e400 is out of range"),
    ('"-1"', '"-1" is not a whole number'),
    ("-1", "-1 is outside 68-65535"),
    ("67", "67 is outside 68-65535"),
    ('"65536"', "65536 is outside 68-65535"),
    ('"' + "9" * 5000 + '"', "is outside 68-65535"),
    ("9" * 5000, "an integer has more than 4300 digits"),
    ("1500.5", "1500.5 is not a whole number"),
    ('"1500.0"', '"1500.0" is not a whole number'),
    ('"\\u00b2"', "is not a whole number"),  # int() refuses it: was a 500
    ('"\\u0663\\u0660\\u0660\\u0660"', "is not a whole number"),  # int() reads 3000: was taken
    ('"1_500"', '"1_500" is not a whole number'),
    ('" 1500"', '" 1500" is not a whole number'),
    ("true", "true is not a whole number"),
    ("[1500]", "[1500] is not a whole number"),
])
async def test_bad_mtu_is_a_400_naming_option_and_range(plugin, mtu_json, needle):
    client, mgr, links, ipam = plugin
    resp = await client.post("/NetworkDriver.CreateNetwork", data=network_body(mtu_json))
    reply = json.loads(await resp.text())
    assert resp.status == 400, reply
    assert needle in reply["Err"], reply
    if "JSON" not in needle and "digits" not in needle and "out of range" not in needle:
        assert MTU in reply["Err"]
    assert mgr.networks == {}
    await assert_serving(client)


@pytest.mark.parametrize("mtu_json,want", [('"1400"', 1400), ("9000", 9000), ("1500.0", 1500), ('"0068"', 68),
                                           ('""', 1400), ("null", 1400)])
async def test_good_mtu_is_taken(plugin, mtu_json, want):
    client, mgr, *_ = plugin
    resp = await client.post("/NetworkDriver.CreateNetwork", data=network_body(mtu_json))
    assert resp.status == 200, await resp.text()
    assert mgr.networks[NET].mtu == want


async def test_mtu_below_1280_refused_on_an_ipv6_network(plugin):
    """The kernel takes IPv6 off a link whose MTU is below 1280: refuse it."""
    client, mgr, *_ = plugin
    resp = await client.post("/NetworkDriver.CreateNetwork", data=network_body('"1000"', ipv6=True))
    reply = json.loads(await resp.text())
    assert resp.status == 400 and "1000 is outside 1280-65535 for a network with IPv6" in reply["Err"], reply
    assert mgr.networks == {}


@pytest.mark.parametrize("raw", [b"[" * 200_000, b"{" * 200_000, b'{"NetworkID":' * 50_000,
                                 b"[" * 65 + b"]" * 65])
@pytest.mark.parametrize("method", ["NetworkDriver.CreateNetwork", "IpamDriver.RequestPool",
                                    "IpamDriver.GetCapabilities"])
async def test_deeply_nested_json_is_a_400(plugin, method, raw):
    client, mgr, links, ipam = plugin
    resp = await client.post(f"/{method}", data=raw)
    reply = json.loads(await resp.text())
    assert resp.status == 400, reply
    assert reply["Err"] == f"{method}: malformed JSON: JSON nested deeper than 64 levels"
    await assert_serving(client)


async def test_lone_surrogate_escape_is_a_400(plugin):
    """A string dockerd's Go could never send, which the store cannot write (was a 500)."""
    client, mgr, links, ipam = plugin
    await create_cilium_network(client, ipv6=False)
    before = state(mgr, links, ipam)
    resp = await client.post("/NetworkDriver.DeleteEndpoint", data=f'{{"NetworkID": "{NET}", "EndpointID": "\\ud800"}}')
    reply = json.loads(await resp.text())
    assert resp.status == 400 and "half of a UTF-16 surrogate pair" in reply["Err"], reply
    assert state(mgr, links, ipam) == before


# ---- pool IDs -----------------------------------------------------------------

@pytest.mark.parametrize("method,body,status,needle", [
    # Forged subnet-encoded IDs: outside the node range, another family's, the whole Internet.
    ("IpamDriver.RequestAddress", {"PoolID": "CiliumPoolv4:8.8.8.0/24", "Address": "8.8.8.8"}, 400,
     "pool 'CiliumPoolv4:8.8.8.0/24' is not a pool of this node: subnet 8.8.8.0/24 is outside this node's IPv4 "
     "range 10.77.0.0/16"),
    ("IpamDriver.RequestAddress", {"PoolID": "CiliumPoolv4:0.0.0.0/0", "Address": ""}, 400, "outside this node's"),
    ("IpamDriver.RequestAddress", {"PoolID": "CiliumPoolv6:8.8.8.0/24", "Address": ""}, 400,
     "pool 8.8.8.0/24 is not an IPv6 subnet"),
    ("IpamDriver.RequestAddress", {"PoolID": "CiliumPoolv4:f00d::a4d:0:0:0/112", "Address": ""}, 400,
     "is not an IPv4 subnet"),
    ("IpamDriver.RequestAddress", {"PoolID": "CiliumPoolv4:10.77.1.0/24:8.8.8.0/24", "Address": ""}, 400,
     "--ip-range 8.8.8.0/24 is not inside --subnet 10.77.1.0/24"),
    ("IpamDriver.RequestAddress", {"PoolID": "CiliumPoolv4:10.77.1.5/24", "Address": ""}, 400, "has host bits set"),
    # Not the exact ID RequestPool gives for that pool.
    ("IpamDriver.RequestAddress", {"PoolID": "CiliumPoolv4:10.77.0.0/16", "Address": ""}, 400,
     "this pool's ID is 'CiliumPoolv4'"),
    ("IpamDriver.RequestAddress", {"PoolID": "CiliumPoolv4:", "Address": ""}, 400, "malformed pool ID"),
    ("IpamDriver.RequestAddress", {"PoolID": "CiliumPoolv4:garbage", "Address": ""}, 400, "malformed pool ID"),
    ("IpamDriver.RequestAddress", {"PoolID": "CiliumPoolv5", "Address": ""}, 400, "unknown pool 'CiliumPoolv5'"),
    # Family mismatch between the pool and the address asked for.
    ("IpamDriver.RequestAddress", {"PoolID": "CiliumPoolv6", "Address": "0.0.0.0"}, 400,
     "0.0.0.0 is not an IPv6 address"),
    ("IpamDriver.RequestAddress", {"PoolID": "CiliumPoolv4", "Address": "f00d::a4d:0:0:9"}, 400,
     "is not an IPv4 address"),
    ("IpamDriver.RequestAddress", {"PoolID": "CiliumPoolv4", "Address": "8.8.8.8"}, 400, "outside pool 10.77.0.0/16"),
    # Releases: a bad pool, an address of another family or outside the pool.
    ("IpamDriver.ReleasePool", {"PoolID": "CiliumPoolv4:8.8.8.0/24"}, 400, "is not a pool of this node"),
    ("IpamDriver.ReleasePool", {"PoolID": "Bogus"}, 400, "unknown pool 'Bogus'"),
    ("IpamDriver.ReleaseAddress", {"PoolID": "CiliumPoolv4:8.8.8.0/24", "Address": "8.8.8.8"}, 400,
     "is not a pool of this node"),
    ("IpamDriver.ReleaseAddress", {"PoolID": "CiliumPoolv4", "Address": "f00d::a4d:0:0:9"}, 400,
     "IP f00d::a4d:0:0:9 is outside pool 10.77.0.0/16"),
    ("IpamDriver.ReleaseAddress", {"PoolID": "CiliumPoolv4:10.77.1.0/24", "Address": "10.77.0.9"}, 400,
     "IP 10.77.0.9 is outside pool 10.77.1.0/24"),
])
async def test_bad_pool_ids_refused_without_state_change(plugin, method, body, status, needle):
    client, mgr, links, ipam = plugin
    # Addresses held before: one per pool, so a wrong release would show.
    for pool_id, address in (("CiliumPoolv4", "10.77.0.9"), ("CiliumPoolv6", "f00d::a4d:0:0:9"),
                             ("CiliumPoolv4:10.77.1.0/24", "10.77.1.9")):
        ok, reply = await call(client, "IpamDriver.RequestAddress", {"PoolID": pool_id, "Address": address})
        assert ok == 200, reply
    before = ipam.allocations()
    got, reply = await call(client, method, body)
    assert got == status, reply
    assert needle in reply["Err"] and reply["Error"] == reply["Err"], reply
    assert ipam.allocations() == before
    assert await ipam.store.get_prefix("cilium/state/ipam/v1/") == {
        f"cilium/state/ipam/v1/{ip}": json.dumps(rec).encode() for ip, rec in before.items()}
    await assert_serving(client)


async def test_release_from_another_pool_is_refused(plugin):
    """Two networks share the node range: one may not free the other's address."""
    client, mgr, links, ipam = plugin
    _, got = await call(client, "IpamDriver.RequestAddress", {"PoolID": "CiliumPoolv4:10.77.1.0/24", "Address": ""})
    address = got["Address"].split("/")[0]
    status, reply = await call(client, "IpamDriver.ReleaseAddress", {"PoolID": "CiliumPoolv4", "Address": address})
    assert status == 409, reply
    assert reply["Err"] == f"IP {address} was allocated from pool CiliumPoolv4:10.77.1.0/24, not CiliumPoolv4"
    assert address in ipam.allocations()
    status, _ = await call(client, "IpamDriver.ReleaseAddress",
                           {"PoolID": "CiliumPoolv4:10.77.1.0/24", "Address": address})
    assert status == 200 and address not in ipam.allocations()


async def test_good_pool_ids_still_work(plugin):
    client, mgr, links, ipam = plugin
    for v6, pool, sub in ((False, "", ""), (True, "::1/112", ""), (False, "10.77.4.0/24", "10.77.4.64/26"),
                          (True, "f00d::a4d:0:0:0/112", "")):
        status, reply = await call(client, "IpamDriver.RequestPool",
                                   {"AddressSpace": "CiliumLocal", "Pool": pool, "SubPool": sub, "V6": v6})
        assert status == 200, reply
        pool_id = reply["PoolID"]
        status, got = await call(client, "IpamDriver.RequestAddress", {"PoolID": pool_id, "Address": ""})
        assert status == 200, got
        status, _ = await call(client, "IpamDriver.ReleaseAddress", {"PoolID": pool_id, "Address": got["Address"]})
        assert status == 200
        status, _ = await call(client, "IpamDriver.ReleasePool", {"PoolID": pool_id})
        assert status == 200
    assert ipam.allocations() == {}


# ---- endpoint and network addresses ---------------------------------------------

@pytest.mark.parametrize("iface,needle", [
    ({"Address": "f00d::a4d:0:0:99/128"}, "Interface.Address: f00d::a4d:0:0:99 is not an IPv4 address"),
    ({"AddressIPv6": "10.77.0.99/32"}, "Interface.AddressIPv6: 10.77.0.99 is not an IPv6 address"),
    ({"Address": "8.8.8.8/32"}, "Interface.Address: 8.8.8.8 is outside this node's IPv4 range 10.77.0.0/16"),
    ({"Address": "127.0.0.1/32"}, "127.0.0.1 is not a unicast address"),
    ({"Address": "0.0.0.0/32"}, "0.0.0.0 is not a unicast address"),
    ({"Address": "224.0.0.1/32"}, "224.0.0.1 is not a unicast address"),
    ({"Address": "10.77.0.0/32"}, "10.77.0.0 is reserved in 10.77.0.0/16"),
    ({"Address": "10.77.255.255/32"}, "10.77.255.255 is reserved in 10.77.0.0/16"),
    ({"Address": "10.77.0.98/32", "AddressIPv6": "f00e::1/128"}, "f00e::1 is outside this node's IPv6 range"),
    ({"Address": "10.77.0.97/32", "MacAddress": "ff:ff:ff:ff:ff:ff"}, "is not a unicast MAC address"),
    ({"Address": "10.77.0.97/32", "MacAddress": "01:00:5e:00:00:01"}, "is not a unicast MAC address"),
    ({"Address": "10.77.0.97/32", "MacAddress": "00:00:00:00:00:00"}, "is not a unicast MAC address"),
])
async def test_endpoint_address_must_belong_to_the_network(plugin, iface, needle):
    client, mgr, links, ipam = plugin
    await create_cilium_network(client, ipv6=True)
    before = state(mgr, links, ipam)
    status, reply = await call(client, "NetworkDriver.CreateEndpoint",
                               {"NetworkID": NET, "EndpointID": EP, "Interface": iface})
    assert status == 400 and needle in reply["Err"], reply
    assert state(mgr, links, ipam) == before


async def test_docker_ipam_endpoint_address_inside_the_pool(plugin):
    client, mgr, links, ipam = plugin
    status, reply = await call(client, "NetworkDriver.CreateNetwork", {
        "NetworkID": NET, "IPv4Data": [{"AddressSpace": "LocalDefault", "Pool": "172.18.0.0/16",
                                        "Gateway": "172.18.0.1/16"}]})
    assert status == 200, reply
    status, reply = await call(client, "NetworkDriver.CreateEndpoint",
                               {"NetworkID": NET, "EndpointID": EP, "Interface": {"Address": "172.19.0.2/16"}})
    assert status == 400 and reply["Err"] == "Interface.Address: 172.19.0.2 is outside the network's subnet " \
                                             "172.18.0.0/16", reply
    assert mgr.endpoints == {} and links.links == {}


@pytest.mark.parametrize("v4,v6,needle", [
    ([{"AddressSpace": "CiliumLocal", "Pool": "f00d::/96", "Gateway": "f00d::1/128"}], [],
     "IPv4Data[0].Pool: f00d::/96 is not an IPv4 subnet"),
    ([{"AddressSpace": "", "Pool": "172.30.0.0/16", "Gateway": "f00d::1/64"}], [],
     "IPv4Data[0].Gateway: f00d::1/64 is not an IPv4 address"),
    ([], [{"AddressSpace": "", "Pool": "10.9.0.0/16", "Gateway": ""}], "IPv6Data[0].Pool: 10.9.0.0/16 is not an IPv6 subnet"),
])
async def test_network_data_of_the_wrong_family_refused(plugin, v4, v6, needle):
    client, mgr, links, ipam = plugin
    status, reply = await call(client, "NetworkDriver.CreateNetwork",
                               {"NetworkID": NET, "IPv4Data": v4, "IPv6Data": v6})
    assert status == 400 and reply["Err"] == needle, reply
    assert mgr.networks == {} and links.host_addresses == set()
