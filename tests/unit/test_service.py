"""Services without the kernel: the ServiceSpec parser's messages, the
/v1/service API on the unit daemon, and ServiceManager's backend IDs,
draining and restore over an in-memory LB map (the real LBMap's calls)."""

from __future__ import annotations

import json

import pytest

from docker_cilium.datapath.maps.lbmap import L4Addr, LBService
from docker_cilium.errors import BadRequest, Conflict
from docker_cilium.kvstore import keys
from docker_cilium.service.manager import ServiceManager
from docker_cilium.service.model import Service, parse_addr, parse_spec
from tests.unit.unit_daemon import api_error

FE = {"ip": "10.96.0.10", "port": 80}


def spec(**kw):
    return {"frontend-address": FE, "backend-addresses": [{"ip": "10.2.0.2", "port": 8080}], **kw}


@pytest.mark.parametrize("body, message", [
    ({}, "frontend-address is required"),
    ({"frontend-address": {"ip": "10.96.0.300", "port": 80}}, "frontend-address.ip: '10.96.0.300' is not"),
    ({"frontend-address": {"ip": "10.96.0.10", "port": 0}}, "frontend-address.port: expected a port number"),
    ({"frontend-address": {"ip": "10.96.0.10", "port": 80, "protocol": "SCTP"}},
     "frontend-address.protocol: expected TCP or UDP"),
    ({"frontend-address": {"ip": "0.0.0.0", "port": 80}}, "cannot be a service address"),
    ({"frontend-address": FE, "backend-addresses": [{"ip": "f00d::1", "port": 80}]},
     "backend-addresses[0].ip: f00d::1 is not IPv4 like the frontend"),
    ({"frontend-address": FE, "backend-addresses": [{"ip": "10.2.0.2", "port": 80, "weight": 5}]},
     "backend-addresses[0].weight: only weight 1"),
    ({"frontend-address": FE, "backend-addresses": [{"ip": "10.2.0.2", "port": 80}] * 2},
     "backend-addresses[1]: 10.2.0.2:80 is listed twice"),
    ({"frontend-address": FE, "backend-addresses": {"ip": "10.2.0.2"}}, "backend-addresses: expected an array"),
    ({"frontend-address": FE, "bogus": 1}, "service: unknown field 'bogus'"),
    ({"id": 3, "frontend-address": FE}, "id 3 in the body differs from 7 in the path"),
])
def test_bad_spec_is_named(body, message):
    with pytest.raises(BadRequest) as exc:
        parse_spec(body, 7)
    assert message in str(exc.value)


def test_spec_round_trip_v6_udp():
    svc = parse_spec({"frontend-address": {"ip": "FD00::10", "port": 53, "protocol": "udp"},
                      "backend-addresses": [{"ip": "f00d::1", "port": 5353}]}, 2)
    assert svc == Service(2, L4Addr("fd00::10", 53, "UDP"), (L4Addr("f00d::1", 5353, "UDP"),))
    assert parse_spec(svc.spec(), 2) == svc


@pytest.mark.parametrize("text, want", [("10.96.0.10:80", ("10.96.0.10", 80)), ("[fd00::10]:53", ("fd00::10", 53))])
def test_parse_addr(text, want):
    assert parse_addr(text, "--frontend") == want


@pytest.mark.parametrize("text", ["10.96.0.10", "fd00::10:53", "10.96.0.10:http"])
def test_parse_addr_rejects(text):
    with pytest.raises(ValueError, match="--frontend"):
        parse_addr(text, "--frontend")


async def test_api_create_update_get_list_delete(api):
    client, _daemon = api
    resp = await client.put("/v1/service/7", json=spec())
    assert resp.status == 201
    body = await resp.json()
    assert body["spec"]["id"] == 7 and body["status"]["realized"] == body["spec"]
    two = spec(**{"backend-addresses": [{"ip": "10.2.0.2", "port": 8080}, {"ip": "10.2.0.3", "port": 8080}]})
    assert (await client.put("/v1/service/7", json=two)).status == 200
    got = await (await client.get("/v1/service/7")).json()
    assert [b["ip"] for b in got["spec"]["backend-addresses"]] == ["10.2.0.2", "10.2.0.3"]
    assert [m["spec"]["id"] for m in await (await client.get("/v1/service")).json()] == [7]
    assert "frontend 10.96.0.10:80/TCP is service 7's" in await api_error(await client.put("/v1/service/8", json=spec()), 409)
    assert "invalid service id 'abc'" in await api_error(await client.get("/v1/service/abc"), 400)
    assert "invalid service id 70000" in await api_error(await client.delete("/v1/service/70000"), 400)
    assert (await client.delete("/v1/service/7")).status == 200
    assert "service 7 not found" in await api_error(await client.get("/v1/service/7"), 404)
    assert "service 7 not found" in await api_error(await client.delete("/v1/service/7"), 404)


class MemLB:
    """The LBMap calls ServiceManager makes, over dicts (what a map would hold)."""

    def __init__(self) -> None:
        self.services: dict[tuple[int, L4Addr], list[tuple[int, L4Addr]]] = {}
        self.backend_entries: dict[int, L4Addr] = {}

    def upsert_service(self, svc_id, frontend, backends):
        self.services[(svc_id, frontend)] = list(backends)
        self.backend_entries.update(dict(backends))

    def delete_service(self, svc_id, frontend):
        return self.services.pop((svc_id, frontend), None) is not None

    def delete_backend(self, backend_id, family):
        return self.backend_entries.pop(backend_id, None) is not None

    def backends(self):
        return dict(self.backend_entries)

    def dump(self):
        return [LBService(i, fe, tuple(bes)) for (i, fe), bes in self.services.items()]


B1, B2, B3 = L4Addr("10.2.0.2", 8080), L4Addr("10.2.0.3", 8080), L4Addr("10.2.0.4", 8080)
FE1, FE2 = L4Addr("10.96.0.10", 80), L4Addr("10.96.0.11", 80)


class FullLB(MemLB):
    """Maps that refuse a service with more than one backend (ENOSPC)."""

    def upsert_service(self, svc_id, frontend, backends):
        if len(backends) > 1:
            raise OSError(28, "No space left on device")
        super().upsert_service(svc_id, frontend, backends)


async def test_backend_ids_shared_removed_backend_drains_until_unused(store):
    lb = MemLB()
    mgr = ServiceManager(store, lb)  # type: ignore[arg-type]
    assert await mgr.upsert(Service(1, FE1, (B1, B2)))
    assert not await mgr.upsert(Service(1, FE1, (B1, B2)))
    await mgr.upsert(Service(2, FE2, (B2, B3)))
    assert lb.services[(2, FE2)] == [(2, B2), (3, B3)]  # B2 keeps its ID across services
    await mgr.upsert(Service(1, FE1, (B2,)))
    assert mgr.draining() == {1: B1} and 1 in lb.backend_entries  # connections may still use B1
    assert mgr.collect_backends({1}) == 0 and 1 in lb.backend_entries
    # a new backend does not take a draining ID; B1 coming back gets its own
    await mgr.upsert(Service(3, L4Addr("10.96.0.12", 80), (L4Addr("10.2.0.9", 80), B1)))
    assert lb.services[(3, L4Addr("10.96.0.12", 80))] == [(4, L4Addr("10.2.0.9", 80)), (1, B1)]
    assert mgr.draining() == {}
    await mgr.delete(3)
    assert mgr.collect_backends(set()) == 2 and set(lb.backend_entries) == {2, 3}


async def test_frontend_conflict_and_frontend_change(store):
    lb = MemLB()
    mgr = ServiceManager(store, lb)  # type: ignore[arg-type]
    await mgr.upsert(Service(1, FE1, (B1,)))
    with pytest.raises(Conflict):
        await mgr.upsert(Service(2, FE1, (B2,)))
    await mgr.upsert(Service(1, FE2, (B1,)))
    assert list(lb.services) == [(1, FE2)]


async def test_restore_writes_records_drops_stale_frontends(store):
    lb = MemLB()
    mgr = ServiceManager(store, lb)  # type: ignore[arg-type]
    await mgr.upsert(Service(1, FE1, (B1, B2)))
    lb.services[(9, FE2)] = [(7, B3)]           # in the maps, no record (deleted while down)
    lb.backend_entries[7] = B3
    del lb.services[(1, FE1)]                   # a record the maps lost
    again = ServiceManager(store, lb)  # type: ignore[arg-type]
    assert await again.restore() == 1
    assert lb.services == {(1, FE1): [(1, B1), (2, B2)]}
    assert again.draining() == {7: B3}
    assert json.loads((await store.get(keys.SERVICES + "1")))["backends"][1]["backend-id"] == 2


async def test_map_failure_rolls_the_store_back(store):
    lb = FullLB()
    mgr = ServiceManager(store, lb)  # type: ignore[arg-type]
    await mgr.upsert(Service(1, FE1, (B1,)))
    with pytest.raises(OSError):
        await mgr.upsert(Service(1, FE1, (B1, B2)))
    assert mgr.get(1) == Service(1, FE1, (B1,)) and lb.services == {(1, FE1): [(1, B1)]}
    assert len(json.loads(await store.get(keys.SERVICES + "1"))["backends"]) == 1
    with pytest.raises(OSError):
        await mgr.upsert(Service(2, FE2, (B1, B2)))
    assert mgr.get(2) is None and await store.get(keys.SERVICES + "2") is None


async def test_map_failure_over_an_unreadable_record_forgets_the_service(store):
    """A record restore skipped is put back, and the refused service is not answered."""
    class Full(MemLB):
        def upsert_service(self, svc_id, frontend, backends):
            raise OSError(28, "No space left on device")

    await store.put(keys.SERVICES + "1", b"{not json")
    lb = Full()
    mgr = ServiceManager(store, lb)  # type: ignore[arg-type]
    assert await mgr.restore() == 0
    with pytest.raises(OSError):
        await mgr.upsert(Service(1, FE1, (B1,)))
    assert mgr.get(1) is None and mgr.services() == []
    assert await store.get(keys.SERVICES + "1") == b"{not json"
