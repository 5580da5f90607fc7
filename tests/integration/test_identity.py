"""Identity allocator against real stores (SQLite file and etcd).

Each test gets a clean ``cilium/`` keyspace from the ``backend_factory``
fixture; multi-node tests give every allocator its OWN store client, as
separate agents would have.
"""

from __future__ import annotations

import asyncio

from docker_cilium.identity import reserved
from docker_cilium.identity.allocator import Identity, IdentityAllocator
from docker_cilium.identity.kvbackend import ID_PREFIX, VALUE_PREFIX
from docker_cilium.identity.labels import Label, Labels, from_docker


def L(**kv: str) -> Labels:
    return from_docker(kv)


async def wait_for(pred, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not await pred():
        assert loop.time() < end, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_allocate_is_stable_and_distinct(backend) -> None:
    a = IdentityAllocator(backend, "node1")
    web = await a.allocate(L(app="web"))
    db = await a.allocate(L(app="db"))
    assert web.id >= reserved.MIN_ALLOCATED and db.id >= reserved.MIN_ALLOCATED
    assert web.id != db.id
    assert (await a.allocate(L(app="web"))).id == web.id
    # Layout as Cilium: master key + leased per-node reference.
    key = L(app="web").sorted_key()
    assert await backend.get(f"{ID_PREFIX}{web.id}") == key.encode()
    assert await backend.get(f"{VALUE_PREFIX}{key}/node1") == str(web.id).encode()
    assert await a.get(web.id) == Identity(web.id, L(app="web"))
    assert [i.id for i in await a.list()] == sorted([web.id, db.id])


async def test_label_subset_never_shares_identity(backend) -> None:
    """Cilium once matched label keys by prefix: {a} must not get {a,b}'s id."""
    a = IdentityAllocator(backend, "node1")
    both = await a.allocate(L(app="web", zone="a"))
    one = await a.allocate(L(app="web"))
    assert one.id != both.id
    other = IdentityAllocator(backend, "node2")
    assert (await other.allocate(L(app="web"))).id == one.id
    assert (await other.allocate(L(app="web", zone="a"))).id == both.id


async def test_reserved_labels_give_reserved_ids_without_store(backend) -> None:
    a = IdentityAllocator(backend, "node1")
    for num in (reserved.HOST, reserved.WORLD, reserved.UNMANAGED, reserved.HEALTH, reserved.INIT):
        lbls = reserved.labels_for(num)
        ident = await a.allocate(lbls)
        assert ident.id == num and ident.is_reserved
        assert (await a.get(num)).labels == lbls
        assert await a.release(ident) is False
    assert await backend.get_prefix("cilium/") == {}
    assert [i.id for i in await a.list(include_reserved=True)] == [1, 2, 3, 4, 5, 6]


async def test_release_refcount_then_gc_frees(backend) -> None:
    a = IdentityAllocator(backend, "node1")
    i1 = await a.allocate(L(app="web"))
    await a.allocate(L(app="web"))
    assert await a.release(i1) is False  # still used locally (allocated twice)
    assert await a.gc() == []
    assert await a.release(i1) is True
    assert await backend.get_prefix(VALUE_PREFIX) == {}
    assert await a.gc() == [i1.id]
    assert await a.get(i1.id) is None
    assert await a.gc() == []
    # The number can now be reused, for other labels.
    assert (await a.allocate(L(app="other"))).id == i1.id


async def test_gc_keeps_ids_referenced_by_another_node(backend_factory) -> None:
    a = IdentityAllocator(await backend_factory(), "node1")
    b = IdentityAllocator(await backend_factory(), "node2")
    ia = await a.allocate(L(app="web"))
    ib = await b.allocate(L(app="web"))
    assert ia.id == ib.id
    await a.release(ia)
    assert await a.gc() == [] and await b.gc() == []
    await b.release(ib)
    assert await a.gc() == [ia.id]


async def test_dead_node_loses_references_and_gc_frees(backend_factory) -> None:
    survivor = IdentityAllocator(await backend_factory(), "node1")
    dying_store = await backend_factory()
    dying = IdentityAllocator(dying_store, "node2")
    shared = await dying.allocate(L(app="shared"))
    only_dead = await dying.allocate(L(app="dead"))
    assert (await survivor.allocate(L(app="shared"))).id == shared.id
    assert await survivor.gc() == []
    await dying.close()
    await dying_store.revoke_session()  # node2 dies: its leased references vanish
    assert not any(k.endswith("/node2") for k in await survivor.backend.get_prefix(VALUE_PREFIX))
    assert await survivor.gc() == [only_dead.id]
    assert await survivor.get(shared.id) is not None


async def test_lease_expiry_of_dead_node_frees_ids(backend_factory) -> None:
    survivor = IdentityAllocator(await backend_factory(), "node1")
    dying_store = await backend_factory(lease_ttl=2)
    ident = await IdentityAllocator(dying_store, "node2").allocate(L(app="ttl"))
    await dying_store.close()  # keep-alive stops, no revoke
    await wait_for(lambda: _no_refs(survivor), timeout=8)
    assert await survivor.gc() == [ident.id]


async def _no_refs(a: IdentityAllocator) -> bool:
    return await a.backend.get_prefix(VALUE_PREFIX) == {}


async def test_watch_cache_and_resync_after_session_loss(backend_factory) -> None:
    store1, store2 = await backend_factory(), await backend_factory()
    a = IdentityAllocator(store1, "node1")
    b = IdentityAllocator(store2, "node2")
    await a.start()
    try:
        ident = await b.allocate(L(app="cached"))
        await wait_for(lambda: _cached(a, ident.id))
        assert await a.get(ident.id) == ident
        # node1 uses an identity, then loses its session (not dead, e.g. a
        # stall past the TTL): the watch notices and re-asserts the reference.
        mine = await a.allocate(L(app="mine"))
        await store1.revoke_session()
        await wait_for(lambda: _has(store2, f"{VALUE_PREFIX}{L(app='mine').sorted_key()}/node1"))
        assert mine.id not in await b.gc()
        assert await b.get(mine.id) == mine
    finally:
        await a.close()


async def _cached(a: IdentityAllocator, num: int) -> bool:
    return num in a._cache


async def _has(store, key: str) -> bool:
    return await store.get(key) is not None


async def test_two_nodes_concurrent_allocation(backend_factory) -> None:
    """Same labels -> same number, different labels -> different numbers, under races."""
    n1 = IdentityAllocator(await backend_factory(), "node1")
    n2 = IdentityAllocator(await backend_factory(), "node2")
    seen: dict[Labels, set[int]] = {}
    for rnd in range(8):
        shared = [L(app=f"shared{rnd}", i=str(i)) for i in range(3)]
        only1 = [L(app=f"n1-{rnd}", i=str(i)) for i in range(2)]
        only2 = [L(app=f"n2-{rnd}", i=str(i)) for i in range(2)]
        # Also a label set that is a textual prefix of another one.
        prefixed = [L(app=f"shared{rnd}"), L(app=f"shared{rnd}", zone="z")]
        jobs = [(n1, x) for x in shared + only1 + prefixed] + [(n2, x) for x in shared + only2 + prefixed]
        results = await asyncio.gather(*(node.allocate(lbls) for node, lbls in jobs))
        for (_, lbls), ident in zip(jobs, results):
            assert ident.labels == lbls
            seen.setdefault(lbls, set()).add(ident.id)
    for lbls, ids in seen.items():
        assert len(ids) == 1, f"{lbls} got several identities {ids}"
    all_ids = [next(iter(ids)) for ids in seen.values()]
    assert len(all_ids) == len(set(all_ids)), "two label sets share an identity"
    # The store agrees: one master key per label set, nothing else.
    stored = await n1.list()
    assert {i.labels: i.id for i in stored} == {lbls: next(iter(ids)) for lbls, ids in seen.items()}


async def test_concurrent_allocate_release_gc(backend_factory) -> None:
    """GC racing with (re)allocation must never free a number in use."""
    n1 = IdentityAllocator(await backend_factory(), "node1")
    n2 = IdentityAllocator(await backend_factory(), "node2")
    lbls = L(app="churn")
    held = await n2.allocate(L(app="anchor"))
    for _ in range(6):
        i1 = await n1.allocate(lbls)
        await n1.release(i1)
        got, _freed = await asyncio.gather(n2.allocate(lbls), n1.gc())
        # Whatever GC did, the number n2 holds must still map to its labels.
        assert await n1.get(got.id) == Identity(got.id, lbls)
        assert await n1.gc() == []
        await n2.release(got)
    assert (await n1.get(held.id)).labels == L(app="anchor")


def test_identity_str() -> None:
    assert str(Identity(300, Labels([Label("container", "app", "web")]))) == "300 [container:app=web]"
