"""A node cut off from etcd longer than its lease TTL gets its identities back safely.

Real etcd: a three-member cluster owned by this test (its own ports and data
directories).  Node A talks to member m0, node B to member m1.  SIGSTOP on
m0 is an etcd outage for A only: the other two members keep quorum, so A's
lease expires while B goes on allocating and garbage-collecting, which is
exactly how another node's GC comes to free numbers A still uses.
"""

from __future__ import annotations

import asyncio
from typing import AsyncIterator

import pytest

from docker_cilium.identity.allocator import IdentityAllocator
from docker_cilium.identity.kvbackend import ID_PREFIX, VALUE_PREFIX
from docker_cilium.kvstore import KVStoreError
from docker_cilium.kvstore.etcd import EtcdBackend
from tests.integration.etcd_proc import Cluster, start_cluster
from tests.integration.test_identity import L, wait_for

pytestmark = pytest.mark.etcd

TTL_S = 2  # A's session lease: short, so the outage outlasts it quickly


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    c = await asyncio.to_thread(start_cluster, 3)
    try:
        yield c
    finally:
        await asyncio.to_thread(c.stop)


async def _refs_of(store: EtcdBackend, node: str) -> dict[str, int]:
    """node's references as {label key: number}, read from the store."""
    return {k[len(VALUE_PREFIX):].rsplit("/", 1)[0]: int(v)
            for k, v in (await store.get_prefix(VALUE_PREFIX)).items() if k.endswith("/" + node)}


async def _consistent(store: EtcdBackend) -> bool:
    """Every reference names a number whose master key holds the same labels."""
    masters = {int(k[len(ID_PREFIX):]): v.decode() for k, v in (await store.get_prefix(ID_PREFIX)).items()}
    refs = await store.get_prefix(VALUE_PREFIX)
    return all(masters.get(int(v)) == k[len(VALUE_PREFIX):].rsplit("/", 1)[0] for k, v in refs.items())


async def test_references_restored_and_reused_number_refused_after_etcd_outage(cluster: Cluster) -> None:
    m0, m1 = cluster.members[0], cluster.members[1]
    store_a = EtcdBackend([m0.address], lease_ttl=TTL_S)
    store_b = EtcdBackend([m1.address], lease_ttl=15)
    await store_a.connect()
    await store_b.connect()
    a, b = IdentityAllocator(store_a, "node-a"), IdentityAllocator(store_b, "node-b")
    changes: list[int] = []
    await a.start()
    await b.start()
    try:
        a.subscribe(lambda: changes.append(1))
        one = await a.allocate(L(app="one"))
        keep = await a.allocate(L(app="keep"))
        one_key, keep_key = L(app="one").sorted_key(), L(app="keep").sorted_key()

        m0.pause()  # etcd outage for node A, longer than its TTL
        try:
            await wait_for(lambda: _no_refs(store_b, "node-a"), timeout=10 * TTL_S)
            # Meanwhile node B's GC frees A's numbers and hands the lowest to other labels.
            assert sorted(await b.gc()) == sorted([one.id, keep.id])
            two = await b.allocate(L(app="two"))
            assert two.id == one.id, "precondition: B reuses the number A still holds"
        finally:
            m0.resume()

        # A re-creates its references and never keeps a number that now means other labels.
        async def recovered() -> bool:
            try:
                refs = await _refs_of(store_b, "node-a")
            except KVStoreError:
                return False
            return set(refs) == {one_key, keep_key} and refs[one_key] != two.id and await _consistent(store_b)

        await wait_for(recovered, timeout=30)
        refs = await _refs_of(store_b, "node-a")
        assert refs[keep_key] == keep.id, "a freed but unused number is reclaimed for the same labels"
        moved = a.current(one)
        assert moved.id == refs[one_key] != two.id
        assert (await b.get(moved.id)).labels == L(app="one")
        assert (await b.get(two.id)).labels == L(app="two")
        # The same labels still get the same number on every node.
        assert (await b.allocate(L(app="one"))).id == moved.id
        # Loud: the conflict is reported and regeneration was triggered.
        st = a.status()
        assert st["state"] == "Warning" and st["session-losses"] >= 1
        assert [(c["id"], c["labels"], c["new-id"]) for c in st["conflicts"]] == [(one.id, one_key, moved.id)]
        assert changes, "the subscribers must be called so endpoints move to the new number"
        # Nothing A uses is collectable any more.
        assert set(await b.gc()).isdisjoint({moved.id, keep.id})
    finally:
        await a.close()
        await b.close()
        await store_a.close()
        await store_b.close()


async def _no_refs(store: EtcdBackend, node: str) -> bool:
    try:
        return not await _refs_of(store, node)
    except KVStoreError:  # "leader changed" while m0, possibly the leader, is stopped
        return False
