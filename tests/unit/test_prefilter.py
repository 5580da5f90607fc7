"""The prefilter's control plane without the kernel: CIDR and spec parsing as
Cilium's (Go's net.ParseCIDR), revisions, all-or-nothing changes, persistence
and restore, and /v1/prefilter through the real REST app (tests/unit/unit_daemon.py;
its deny tries are tests/unit/fakes.FakeTries). The tries and the XDP program in
the kernel: tests/privileged/test_prefilter.py; the agent and CLI:
tests/e2e/test_prefilter.py."""

from __future__ import annotations

import ipaddress
import json

import pytest

from docker_cilium.errors import BadRequest, Conflict, InsufficientStorage, NotFound
from docker_cilium.kvstore.backend import KVStoreError
from docker_cilium.kvstore import keys
from docker_cilium.prefilter import PreFilter, parse_cidr, parse_spec
from docker_cilium.prefilter import manager as manager_mod
from docker_cilium.prefilter.spec import PrefilterSpec
from tests.unit.fakes import FakeTries
from tests.unit.unit_daemon import api_error


def nets(*texts: str) -> tuple:
    return tuple(ipaddress.ip_network(t) for t in texts)


# --- parsing ---------------------------------------------------------------------------
@pytest.mark.parametrize("text,want", [
    ("192.0.2.0/24", "192.0.2.0/24"),
    ("10.1.2.3/8", "10.0.0.0/8"),            # host bits cleared, as Go's ParseCIDR
    (" 198.51.100.7/32 ", "198.51.100.7/32"),
    ("2001:db8::1/32", "2001:db8::/32"),
    ("::/0", "::/0"),
    ("0.0.0.0/0", "0.0.0.0/0"),
])
def test_parse_cidr(text, want):
    assert str(parse_cidr(text)) == want


@pytest.mark.parametrize("text,needle", [
    ("192.0.2.1", "no prefix length"),
    ("192.0.2.0/33", "prefix length 33 is above 32 for IPv4"),
    ("2001:db8::/129", "above 128 for IPv6"),
    ("192.0.2.0/x", "prefix length must be a number"),
    ("192.0.2.0/-1", "prefix length must be a number"),
    ("192.0.2.0/٨", "prefix length must be a number"),
    ("300.0.2.0/24", "is not an IPv4 or IPv6 address"),
    ("01.2.3.4/8", "is not an IPv4 or IPv6 address"),
    ("fe80::1%eth0/64", "zone index"),
    ("/24", "is not an IPv4 or IPv6 address"),
    (24, "must be a string"),
])
def test_parse_cidr_rejects_with_the_reason(text, needle):
    with pytest.raises(BadRequest, match=needle) as exc:
        parse_cidr(text, "deny[3]")
    assert str(exc.value).startswith("deny[3]: ")


@pytest.mark.parametrize("body,needle", [
    ([], "must be a JSON object"),
    ({"deny": ["192.0.2.0/24"], "cidrs": []}, "unknown field 'cidrs'"),
    ({"deny": "192.0.2.0/24"}, "deny must be a JSON array"),
    ({}, "deny must be a JSON array"),
    ({"deny": []}, "deny is empty"),
    ({"deny": ["192.0.2.0/24"], "revision": -1}, "revision must be a non-negative integer"),
    ({"deny": ["192.0.2.0/24"], "revision": "1"}, "revision must be a non-negative integer"),
    ({"deny": ["192.0.2.0/24"], "revision": True}, "revision must be a non-negative integer"),
    ({"deny": ["192.0.2.0/24", "bad"]}, "deny[1]: invalid CIDR 'bad'"),
])
def test_parse_spec_rejects(body, needle):
    with pytest.raises(BadRequest) as exc:
        parse_spec(body)
    assert needle in str(exc.value)


def test_parse_spec_dedups_and_defaults_revision():
    spec = parse_spec({"deny": ["192.0.2.0/24", "192.0.2.9/24", "2001:db8::/32"]})
    assert spec == PrefilterSpec(0, nets("192.0.2.0/24", "2001:db8::/32"))


# --- manager ---------------------------------------------------------------------------
@pytest.fixture
async def pf(store):
    p = PreFilter(store, FakeTries(), "dev0", "native")
    await p.restore()
    return p


async def test_revisions_and_model(pf):
    assert pf.model() == {"spec": {"revision": 1, "deny": []}, "status": {"realized": {"revision": 1, "deny": []}}}
    await pf.insert(PrefilterSpec(0, nets("2001:db8::/32", "192.0.2.0/24")))
    model = await pf.insert(PrefilterSpec(2, nets("10.0.0.0/8", "192.0.2.0/24")))  # one already there: kept
    assert model["spec"] == {"revision": 3, "deny": ["10.0.0.0/8", "192.0.2.0/24", "2001:db8::/32"]}
    assert model["status"]["realized"] == model["spec"]
    assert pf.tries.nets == set(nets("10.0.0.0/8", "192.0.2.0/24", "2001:db8::/32"))
    model = await pf.delete(PrefilterSpec(3, nets("192.0.2.0/24")))
    assert model["spec"] == {"revision": 4, "deny": ["10.0.0.0/8", "2001:db8::/32"]}
    assert pf.tries.nets == set(nets("10.0.0.0/8", "2001:db8::/32"))


async def test_stale_revision_is_a_conflict_and_changes_nothing(pf):
    await pf.insert(PrefilterSpec(0, nets("192.0.2.0/24")))
    with pytest.raises(Conflict, match="prefilter revision is 2, not 1"):
        await pf.insert(PrefilterSpec(1, nets("10.0.0.0/8")))
    with pytest.raises(Conflict):
        await pf.delete(PrefilterSpec(5, nets("192.0.2.0/24")))
    assert pf.revision == 2 and pf.tries.nets == set(nets("192.0.2.0/24"))


async def test_delete_of_an_absent_prefix_is_404_and_changes_nothing(pf):
    await pf.insert(PrefilterSpec(0, nets("192.0.2.0/24")))
    with pytest.raises(NotFound, match="not in the prefilter deny list: 10.0.0.0/8"):
        await pf.delete(PrefilterSpec(0, nets("192.0.2.0/24", "10.0.0.0/8")))
    assert pf.revision == 2 and pf.deny == list(nets("192.0.2.0/24"))


async def test_a_failed_map_write_is_undone(pf):
    pf.tries.fail_on = ipaddress.ip_network("10.0.0.0/8")
    with pytest.raises(OSError):
        await pf.insert(PrefilterSpec(0, nets("192.0.2.0/24", "10.0.0.0/8")))
    assert pf.tries.nets == set() and pf.revision == 1 and pf.deny == []


async def test_a_failed_store_write_undoes_the_maps(pf, store):
    await pf.insert(PrefilterSpec(0, nets("192.0.2.0/24")))
    await store.close()
    with pytest.raises(KVStoreError):
        await pf.insert(PrefilterSpec(0, nets("10.0.0.0/8")))
    with pytest.raises(KVStoreError):
        await pf.delete(PrefilterSpec(0, nets("192.0.2.0/24")))
    assert pf.tries.nets == set(nets("192.0.2.0/24")) and pf.revision == 2


async def test_a_family_beyond_its_map_size_is_507(pf, monkeypatch):
    monkeypatch.setattr(manager_mod, "CIDR_MAP_SIZE", 2)
    await pf.insert(PrefilterSpec(0, nets("192.0.2.0/24", "2001:db8::/32", "2001:db9::/32")))
    with pytest.raises(InsufficientStorage, match="IPv4 deny list would hold 3 prefixes"):
        await pf.insert(PrefilterSpec(0, nets("10.0.0.0/8", "172.16.0.0/12")))
    assert pf.revision == 2


async def test_restore_writes_the_persisted_list_and_drops_stale_prefixes(pf, store):
    await pf.insert(PrefilterSpec(0, nets("192.0.2.0/24", "2001:db8::/32")))
    tries = FakeTries()
    tries.nets = set(nets("10.0.0.0/8", "192.0.2.0/24"))  # a crash between the two writes left 10/8
    again = PreFilter(store, tries, "dev0", "native")
    await again.restore()
    assert again.revision == 2 and tries.nets == set(nets("192.0.2.0/24", "2001:db8::/32"))
    assert again.model() == pf.model()


async def test_an_unreadable_record_stops_the_start(store):
    await store.put(keys.PREFILTER, b'{"revision": 3, "deny": ["nope"]}')
    with pytest.raises(RuntimeError, match="cannot be read"):
        await PreFilter(store, FakeTries(), "dev0", "native").restore()


# --- REST ------------------------------------------------------------------------------
async def test_api_round_trip(api):
    client, daemon = api
    resp = await client.get("/v1/prefilter")
    assert resp.status == 200 and (await resp.json())["spec"] == {"revision": 1, "deny": []}
    resp = await client.patch("/v1/prefilter", data=json.dumps({"deny": ["192.0.2.0/24", "2001:db8::/32"]}))
    assert resp.status == 200
    assert (await resp.json())["status"]["realized"] == {"revision": 2, "deny": ["192.0.2.0/24", "2001:db8::/32"]}
    resp = await client.delete("/v1/prefilter", data=json.dumps({"revision": 2, "deny": ["2001:db8::/32"]}))
    assert resp.status == 200 and (await resp.json())["spec"] == {"revision": 3, "deny": ["192.0.2.0/24"]}
    assert daemon.prefilter.tries.nets == set(nets("192.0.2.0/24"))


@pytest.mark.parametrize("method,body,status,needle", [
    ("PATCH", {"deny": ["192.0.2.1"]}, 400, "deny[0]: invalid CIDR '192.0.2.1': no prefix length"),
    ("PATCH", {"deny": ["10.0.0.0/8", "10.0.0.0/40"]}, 400, "deny[1]: invalid CIDR '10.0.0.0/40'"),
    ("PATCH", {"deny": []}, 400, "deny is empty"),
    ("PATCH", {"deny": ["10.0.0.0/8"], "revision": 9}, 409, "prefilter revision is 1, not 9"),
    ("DELETE", {"deny": ["10.0.0.0/8"]}, 404, "not in the prefilter deny list: 10.0.0.0/8"),
    ("DELETE", {"deny": ["x/8"]}, 400, "deny[0]: invalid CIDR 'x/8'"),
])
async def test_api_bad_input(api, method, body, status, needle):
    client, daemon = api
    assert needle in await api_error(await client.request(method, "/v1/prefilter", data=json.dumps(body)), status)
    assert daemon.prefilter.revision == 1 and daemon.prefilter.tries.nets == set()


async def test_api_without_a_prefilter_device_is_404(api):
    client, daemon = api
    daemon.prefilter = None
    for method in ("GET", "PATCH", "DELETE"):
        msg = await api_error(await client.request(method, "/v1/prefilter", data=b'{"deny": ["10.0.0.0/8"]}'), 404)
        assert msg == "prefilter is not enabled in the agent: start cilium-agent with --prefilter-device DEV"


def test_cilium_map_get_shows_the_tries_keys_as_addresses():
    """`cilium map get cilium_cidr_v4_dyn` decodes the LPM keys by their C fields."""
    from docker_cilium.datapath.maps.cidrmap import lpm_v4_key, lpm_v6_key
    from docker_cilium.datapath.maps.pinned import decode

    k4 = lpm_v4_key(prefixlen=24)
    k4.addr[:] = bytes([192, 0, 2, 0])
    k6 = lpm_v6_key(prefixlen=32)
    k6.addr[:] = ipaddress.ip_address("2001:db8::").packed
    assert decode(k4) == {"prefixlen": 24, "addr": "192.0.2.0"}
    assert decode(k6) == {"prefixlen": 32, "addr": "2001:db8::"}


async def test_a_cancelled_change_still_leaves_tries_list_and_record_agreeing(pf, store):
    """Cancelling a PATCH while its tries write runs (agent shutdown) must not
    leave the tries dropping a prefix the list and the record do not hold."""
    import asyncio
    import threading

    entered, release = threading.Event(), threading.Event()
    insert = pf.tries.insert

    def slow_insert(net):
        entered.set()
        release.wait(5)
        insert(net)

    pf.tries.insert = slow_insert
    task = asyncio.ensure_future(pf.insert(PrefilterSpec(0, nets("10.0.0.0/8"))))
    assert await asyncio.to_thread(entered.wait, 5)
    task.cancel()
    await asyncio.sleep(0.05)
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    raw = await store.get(keys.PREFILTER)
    record = json.loads(raw) if raw else {"revision": 1, "deny": []}  # nothing persisted yet
    assert pf.tries.nets == set(pf.deny) == {ipaddress.ip_network(c) for c in record["deny"]}
    assert record["revision"] == pf.revision
