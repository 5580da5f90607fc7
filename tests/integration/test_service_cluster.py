"""Cluster-wide services against a real etcd: two ServiceManagers, each its own etcd
client (two agents), each programming its own LB map recorder from the shared records.

Keys live under a prefix unique to the test (removed afterwards).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import uuid
from typing import AsyncIterator, Awaitable, Callable

import pytest

from docker_cilium.datapath.maps.lbmap import L4Addr
from docker_cilium.errors import Conflict
from docker_cilium.kvstore.etcd import EtcdBackend
from docker_cilium.service.cluster import ClusterServices
from docker_cilium.service.manager import ServiceManager
from docker_cilium.service.model import Service
from tests.unit.test_service import MemLB
from tests.unit.test_service_cluster import BAD_RECORDS

pytestmark = [pytest.mark.etcd, pytest.mark.timeout(120, method="thread")]

Make = Callable[..., Awaitable[EtcdBackend]]
PER_NODE = 25  # services each node creates at once in the concurrency test


@pytest.fixture
async def make(etcd_server: str) -> AsyncIterator[Make]:
    """``await make()``: another connected etcd client (another agent). Not the suite's
    ``backend_factory``: that one wipes the whole keyspace, these tests keep to a prefix."""
    made: list[EtcdBackend] = []

    async def new() -> EtcdBackend:
        b = EtcdBackend([etcd_server])
        await b.connect()
        made.append(b)
        return b

    yield new
    for b in made:
        await b.close()


@pytest.fixture
async def prefix(etcd_server: str) -> AsyncIterator[str]:
    p = f"test-{uuid.uuid4().hex}/cilium/state/services/v1/default/"
    yield p
    b = EtcdBackend([etcd_server])
    await b.connect()
    await b.delete_prefix(p)
    await b.close()


async def until(pred: Callable[[], bool], timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    while not pred():
        assert loop.time() - t0 < timeout, f"condition not met within {timeout}s"
        await asyncio.sleep(0.05)


async def node(make: Make, prefix: str, lb: MemLB) -> ServiceManager:
    backend = await make()
    mgr = ServiceManager(backend, lb, ClusterServices(backend, prefix=prefix))  # type: ignore[arg-type]
    await mgr.restore()
    return mgr


def vip(i: int) -> L4Addr:
    return L4Addr(f"10.96.{i // 250}.{i % 250 + 1}", 80)


async def test_service_made_on_one_node_is_in_the_others_maps_delete_propagates(make: Make, prefix: str) -> None:
    lb1, lb2 = MemLB(), MemLB()
    n1, n2 = await node(make, prefix, lb1), await node(make, prefix, lb2)
    try:
        be = (L4Addr("10.11.0.5", 8080), L4Addr("10.12.0.9", 8080))  # backends on both nodes' ranges
        svc, created = await n1.put(Service(0, vip(0), be))
        assert created and svc.id == 1
        await until(lambda: (1, vip(0)) in lb2.services)
        assert [a for _, a in lb2.services[(1, vip(0))]] == list(be) and n2.get(1) == svc
        again, created = await n2.put(Service(0, vip(0), be[:1]))  # no ID, same frontend: its own
        assert (again.id, created) == (1, False)
        await until(lambda: [a for _, a in lb1.services.get((1, vip(0)), [])] == [be[0]])
        with pytest.raises(Conflict, match="frontend 10.96.0.1:80/TCP is service 1's"):
            await n2.put(Service(9, vip(0), be))
        assert await n2.delete(1)
        await until(lambda: n1.get(1) is None and lb1.services == {})
        assert not await n1.delete(1)
    finally:
        await n1.close()
        await n2.close()


async def test_concurrent_creates_from_two_nodes_never_share_an_id(make: Make, prefix: str) -> None:
    lb1, lb2 = MemLB(), MemLB()
    n1, n2 = await node(make, prefix, lb1), await node(make, prefix, lb2)
    try:
        # each node its own frontends, plus the same 5 frontends from both at once
        jobs = [n1.put(Service(0, vip(i), ())) for i in range(PER_NODE)]
        jobs += [n2.put(Service(0, vip(100 + i), ())) for i in range(PER_NODE)]
        jobs += [n.put(Service(0, vip(200 + i), ())) for i in range(5) for n in (n1, n2)]
        done = await asyncio.gather(*jobs)
        ids = {(s.frontend, s.id) for s, _ in done}
        assert len({fe for fe, _ in ids}) == len(ids) == 2 * PER_NODE + 5  # one ID per frontend
        assert len({i for _, i in ids}) == len(ids)                         # no ID twice
        assert sum(created for _, created in done) == 2 * PER_NODE + 5      # the shared ones created once
        await until(lambda: len(lb1.services) == len(lb2.services) == len(ids))
        assert {(i, fe) for i, fe in lb1.services} == {(i, fe) for fe, i in ids} == set(lb2.services)
        assert n1.services() == n2.services()
    finally:
        await n1.close()
        await n2.close()


async def test_restart_restores_from_the_cluster_store(make: Make, prefix: str) -> None:
    lb1, lb2 = MemLB(), MemLB()
    n1, n2 = await node(make, prefix, lb1), await node(make, prefix, lb2)
    be = (L4Addr("10.11.0.5", 8080), L4Addr("10.12.0.9", 8080))
    try:
        await n1.put(Service(0, vip(0), be))
        gone, _ = await n1.put(Service(0, vip(5), be[:1]))
        await until(lambda: {(1, vip(0)), (gone.id, vip(5))} <= set(lb2.services))
        ids_before = dict(lb2.services[(1, vip(0))])
        await n2.close()  # node2's agent is down: a service made and one deleted meanwhile
        made, _ = await n1.put(Service(0, vip(1), be[1:]))
        assert await n1.delete(gone.id)
        n2 = await node(make, prefix, lb2)  # same maps (pinned), a new client
        assert set(lb2.services) == {(1, vip(0)), (made.id, vip(1))}
        assert dict(lb2.services[(1, vip(0))]) == ids_before  # backend IDs kept across the restart
        assert lb2.services[(made.id, vip(1))] == [(2, be[1])]  # be[1] keeps the ID service 1 gave it
        assert n2.services() == n1.services()
    finally:
        await n1.close()
        await n2.close()


def etcdctl_put(server: str, key: str, value: bytes) -> None:
    subprocess.run(["etcdctl", f"--endpoints={server}", "put", key, value.decode()], check=True,
                   capture_output=True, env={**os.environ, "ETCDCTL_API": "3"}, timeout=20)


async def test_records_written_with_etcdctl_that_the_api_refuses_never_reach_the_maps(
        make: Make, prefix: str, etcd_server: str) -> None:
    """At restore (where a record the real LB map refuses used to fail the agent's start)
    and from the watch: only the sound service is programmed."""
    lb = MemLB()
    n1 = await node(make, prefix, lb)
    ids = ClusterServices(n1._cluster.backend, prefix=prefix).ids  # type: ignore[union-attr]
    n2: ServiceManager | None = None
    try:
        await n1.put(Service(0, vip(0), (L4Addr("10.11.0.5", 8080),)))
        for name, raw in BAD_RECORDS.items():
            await asyncio.to_thread(etcdctl_put, etcd_server, ids + name, raw)
        lb2 = MemLB()
        n2 = await node(make, prefix, lb2)
        assert set(lb2.services) == {(1, vip(0))}
        for name, raw in BAD_RECORDS.items():  # the same bad records, now arriving through the watch
            await asyncio.to_thread(etcdctl_put, etcd_server, ids + name + "0",
                                    raw.replace(b'"id": ' + name.encode(), b'"id": ' + name.encode() + b"0"))
        late, _ = await n1.put(Service(0, vip(1), ()))  # an ID after the highest record's
        await until(lambda: (late.id, vip(1)) in lb2.services and not n2._pending  # type: ignore[union-attr]
                    and (n2._apply_task is None or n2._apply_task.done()))  # type: ignore[union-attr]
        assert set(lb2.services) == {(1, vip(0)), (late.id, vip(1))} == set(lb.services)
    finally:
        await n1.close()
        if n2 is not None:
            await n2.close()
