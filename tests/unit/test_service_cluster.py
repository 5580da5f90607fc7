"""Cluster-wide services over the SQLite backend (two clients of one file = two agents):
ID claims and allocation (service/cluster.py), two ServiceManagers seeing each other's
services in their maps, restart, the store down (503), and ID 0 on the embedded agent.
The same scenarios against a real etcd: tests/integration/test_service_cluster.py."""

from __future__ import annotations

import asyncio
import json
from typing import Callable

import pytest

from docker_cilium.datapath.maps.lbmap import L4Addr
from docker_cilium.errors import BadRequest, Conflict, Unavailable
from docker_cilium.kvstore.backend import KVStoreError
from docker_cilium.kvstore.sqlite import SQLiteBackend
from docker_cilium.service.cluster import ClusterServices, frontend_name, next_id
from docker_cilium.service import manager as manager_module
from docker_cilium.service.manager import ServiceManager
from docker_cilium.service.model import Service, parse_id
from tests.unit.test_cli import agent, run  # noqa: F401  (the served unit daemon fixture)
from tests.unit.test_service import B1, B2, B3, FE1, FE2, FullLB, MemLB, spec
from tests.unit.unit_daemon import api_error

FE3 = L4Addr("10.96.0.12", 80)


@pytest.fixture
async def clients(tmp_path):
    """Two connected clients of one store: two agents' view of the cluster store."""
    made = []
    for _ in range(2):
        b = SQLiteBackend(str(tmp_path / "kvstore.db"))
        await b.connect()
        made.append(b)
    yield made
    for b in made:
        await b.close()


async def until(pred: Callable[[], bool], timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    while not pred():
        assert loop.time() - t0 < timeout, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_ids_claimed_allocated_and_kept_by_the_frontend(clients):
    cs = ClusterServices(clients[0])
    got, created, _ = await cs.upsert(Service(0, FE1, (B1,)))
    assert (got.id, created) == (1, True)
    again, created, previous = await cs.upsert(Service(0, FE1, (B1, B2)))  # same frontend, no ID: its own
    assert (again.id, created) == (1, False) and previous is not None
    assert (await cs.upsert(Service(5, FE2, (B2,))))[0].id == 5  # an ID given is claimed
    assert (await cs.upsert(Service(0, FE3, ())))[0].id == 6      # the next after the highest
    with pytest.raises(Conflict, match="frontend 10.96.0.10:80/TCP is service 1's"):
        await cs.upsert(Service(5, FE1, (B1,)))
    with pytest.raises(Conflict, match="service ID 5 is registered to frontend 10.96.0.11:80/TCP"):
        await cs.upsert(Service(5, L4Addr("10.96.0.99", 80), ()))
    with pytest.raises(Conflict, match="frontend 10.96.0.10:80/TCP is service 1's"):
        await cs.upsert(Service(7, FE1, ()))
    assert (await cs.delete(5)).frontend == FE2 and await cs.delete(5) is None
    assert await clients[0].get(cs.frontends + frontend_name(FE2)) is None  # the claim went with it
    assert (await cs.upsert(Service(5, L4Addr("10.96.0.99", 80), ())))[0].id == 5


async def test_a_stale_frontend_claim_is_taken_over(clients):
    """An agent that died between claiming the frontend and writing the record left a
    claim naming an ID without a record: the frontend is free."""
    cs = ClusterServices(clients[0])
    await clients[0].put(cs.frontends + frontend_name(FE1), b"9")
    got, created, _ = await cs.upsert(Service(0, FE1, (B1,)))
    assert created and got.id == 1
    assert await clients[0].get(cs.frontends + frontend_name(FE1)) == b"1"


def test_next_id_wraps_to_the_lowest_free():
    assert next_id(set()) == 1 and next_id({1, 2, 7}) == 8
    assert next_id({3, 0xFFFF}) == 1
    with pytest.raises(Conflict, match="no service ID left"):
        next_id(set(range(1, 0x10000)))


def test_id_zero_only_where_it_allocates():
    assert parse_id("0", allocate=True) == 0
    with pytest.raises(BadRequest, match=r"invalid service id 0: expected a number \(1-65535\)"):
        parse_id("0")


async def manager(backend, lb) -> ServiceManager:
    mgr = ServiceManager(backend, lb, ClusterServices(backend))  # type: ignore[arg-type]
    await mgr.restore()
    return mgr


async def test_two_agents_share_services_delete_propagates_restart_restores(clients):
    lb_a, lb_b = MemLB(), MemLB()
    a, b = await manager(clients[0], lb_a), await manager(clients[1], lb_b)
    try:
        made, created = await a.put(Service(0, FE1, (B1, B2)))
        assert created and made.id == 1 and lb_a.services[(1, FE1)] == [(1, B1), (2, B2)]
        await until(lambda: (1, FE1) in lb_b.services)
        assert b.get(1) == made and [s for s, _ in lb_b.services[(1, FE1)]] == [1, 2]
        await b.put(Service(0, FE2, (B3,)))  # made on b: on a too, with the next ID
        await until(lambda: (2, FE2) in lb_a.services)
        assert lb_a.services[(2, FE2)] == [(3, B3)] and a.get(2) == Service(2, FE2, (B3,))
        await b.close()
        # b restarts: same maps (pinned), records from the store, backends keep their IDs
        lb_b.backend_entries = {7: B1, 8: B2, 9: B3, 4: L4Addr("10.2.0.50", 80)}
        lb_b.services = {(1, FE1): [(7, B1), (8, B2)], (9, FE3): [(4, L4Addr("10.2.0.50", 80))]}
        b = await manager(clients[1], lb_b)
        assert lb_b.services == {(1, FE1): [(7, B1), (8, B2)], (2, FE2): [(9, B3)]}  # FE3: no record
        assert b.draining() == {4: L4Addr("10.2.0.50", 80)}
        assert await b.delete(1)
        await until(lambda: a.get(1) is None and (1, FE1) not in lb_a.services)
        assert a.services() == b.services() == [Service(2, FE2, (B3,))]
    finally:
        await a.close()
        await b.close()


def _raw(svc_id: int, fe_ip: str, port: object = 80, proto: str = "TCP", backends: object = ()) -> bytes:
    return json.dumps({"id": svc_id, "frontend": {"ip": fe_ip, "port": port, "protocol": proto},
                       "backends": [{"ip": ip, "port": p} for ip, p in backends]}).encode()  # type: ignore[union-attr]


BAD_RECORDS = {  # as etcdctl would write them: the API refuses each
    "3": _raw(3, "not-an-ip"),
    "4": _raw(4, "127.0.0.1", 22, backends=[("10.0.0.9", 22)]),
    "5": _raw(5, "10.96.0.50", backends=[("fd00::1", 80)]),
    "6": _raw(6, "10.96.0.51", 70000),
    "7": _raw(7, "10.96.0.52", proto="SCTP"),
    "8": _raw(8, "10.96.0.53", backends=[("10.0.0.1", 80)] * 2),
    "9": _raw(9, "10.96.0.54", backends=[("10.0.0.1", 0)]),
}


async def test_bad_records_never_reach_the_maps_at_restore_or_from_the_watch(clients):
    """Records the API would refuse are skipped (logged), at restore and when they arrive."""
    cs = ClusterServices(clients[0])
    await cs.upsert(Service(1, FE1, (B1,)))
    for name, raw in BAD_RECORDS.items():
        await clients[0].put(cs.ids + name, raw)
    lb = MemLB()
    mgr = await manager(clients[1], lb)
    try:
        assert set(lb.services) == {(1, FE1)} and [s.id for s in mgr.services()] == [1]
        for name, raw in BAD_RECORDS.items():
            await clients[0].put(cs.ids + str(int(name) + 10), raw.replace(b'"id": ' + name.encode(),
                                                                          b'"id": ' + str(int(name) + 10).encode()))
        await cs.upsert(Service(2, FE2, (B2,)))  # after the bad ones: once it is in, they were seen
        await until(lambda: (2, FE2) in lb.services and not mgr._pending
                    and (mgr._apply_task is None or mgr._apply_task.done()))
        assert set(lb.services) == {(1, FE1), (2, FE2)} and [s.id for s in mgr.services()] == [1, 2]
    finally:
        await mgr.close()


async def test_store_down_changes_refused_503_maps_keep_what_they_have(clients):
    lb = MemLB()
    mgr = await manager(clients[0], lb)
    try:
        await mgr.put(Service(0, FE1, (B1,)))

        async def down(*_a, **_k):
            raise KVStoreError("etcd 127.0.0.1:2379: not connected")

        for op in ("get", "create_only", "compare_and_swap", "compare_and_delete", "get_prefix"):
            setattr(clients[0], op, down)
        for change in (mgr.put(Service(0, FE2, (B2,))), mgr.delete(1)):
            with pytest.raises(Unavailable, match="cluster store cannot be reached .*not connected.*"
                                                  "keeps serving the services it has") as exc:
                await change
            assert exc.value.status == 503
        assert lb.services == {(1, FE1): [(1, B1)]} and [s.id for s in mgr.services()] == [1]
    finally:
        await mgr.close()


async def test_maps_refusing_a_cluster_service_revert_the_store(clients):
    lb = FullLB()
    mgr = await manager(clients[0], lb)
    cs = ClusterServices(clients[0])
    try:
        await mgr.put(Service(0, FE1, (B1,)))
        with pytest.raises(OSError):
            await mgr.put(Service(1, FE1, (B1, B2)))
        with pytest.raises(OSError):
            await mgr.put(Service(0, FE2, (B1, B2)))
        assert await clients[0].get(cs.ids + "2") is None
        assert await clients[0].get(cs.frontends + frontend_name(FE2)) is None
        assert (await clients[0].get(cs.ids + "1")) is not None and mgr.get(1) == Service(1, FE1, (B1,))
        assert lb.services == {(1, FE1): [(1, B1)]}
    finally:
        await mgr.close()


async def test_embedded_store_put_id_zero_allocates_and_keeps_the_frontends_id(api):
    client, _daemon = api
    resp = await client.put("/v1/service/0", json=spec())
    assert resp.status == 201 and (await resp.json())["spec"]["id"] == 1
    assert (await client.put("/v1/service/4", json=spec(**{"frontend-address": {"ip": "10.96.0.20", "port": 80}})
                             )).status == 201
    resp = await client.put("/v1/service/0", json=spec())
    assert resp.status == 200 and (await resp.json())["spec"]["id"] == 1  # the frontend's own
    resp = await client.put("/v1/service/0", json=spec(**{"frontend-address": {"ip": "10.96.0.30", "port": 80}}))
    assert (await resp.json())["spec"]["id"] == 5
    assert "invalid service id 0" in await api_error(await client.get("/v1/service/0"), 400)


async def test_a_service_this_nodes_maps_refuse_is_applied_again_later(clients, monkeypatch):
    """Made on node a, refused once by node b's maps (full): b applies it on a retry."""
    monkeypatch.setattr(manager_module, "APPLY_RETRY_S", 0.05)

    class FullOnce(MemLB):
        refused = 0

        def upsert_service(self, svc_id, frontend, backends):
            if not self.refused:
                self.refused += 1
                raise OSError(28, "No space left on device")
            super().upsert_service(svc_id, frontend, backends)

    lb_b = FullOnce()
    a, b = await manager(clients[0], MemLB()), await manager(clients[1], lb_b)
    try:
        await a.put(Service(0, FE1, (B1,)))
        await until(lambda: (1, FE1) in lb_b.services)
        assert lb_b.refused == 1 and b.get(1) == Service(1, FE1, (B1,))
    finally:
        await a.close()
        await b.close()


def test_cli_update_without_id_gets_one_and_keeps_the_frontends(agent):  # noqa: F811
    """`cilium service update` without --id (Cilium's default 0): the agent picks the ID."""
    sock, _daemon = agent
    res = run(sock, "service", "update", "--frontend", "10.96.0.10:80", "--backends", "10.2.0.2:80")
    assert res.exit_code == 0, res.output
    assert res.output.splitlines() == ["Creating new service", "Added service with id '1' and 1 backends"]
    res = run(sock, "service", "update", "--frontend", "10.96.0.10:80", "--backends", "10.2.0.2:80,10.2.0.3:80")
    assert res.output.splitlines() == ["Updating existing service with id '1'", "Updated service with 2 backends"]
    res = run(sock, "service", "update", "--id", "3", "--frontend", "10.96.0.11:80")
    assert res.output.splitlines() == ["Creating new service with id '3'", "Added service with 0 backends"]
