"""Regeneration end to end, minus the kernel: the real allocator, identity
cache, ipcache, policy manager and regenerator, with in-memory maps standing
in for the pinned BPF maps (the privileged and e2e suites run the real ones).

They check what the regenerator and the ipcache write, in which order, and
that a change of rules, enforcement or identities reaches every endpoint
without any attribute being wired after construction.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import AsyncIterator, Iterable

import pytest

from docker_cilium.datapath.maps.lxcmap import EndpointInfo
from docker_cilium.datapath.maps.policymap import PolicyEntry
from docker_cilium.endpoint.model import Endpoint, State
from docker_cilium.endpoint.regenerator import Regenerator
from docker_cilium.identity import reserved
from docker_cilium.identity.allocator import IdentityAllocator
from docker_cilium.identity.cache import IdentityCache
from docker_cilium.identity.labels import Labels
from docker_cilium.ipcache import LOCAL_IDENTITY_BASE, IPCache
from docker_cilium.policy.manager import PolicyManager

HOST_IP = "192.0.2.2"


class FakeIPCacheMap:
    def __init__(self) -> None:
        self.entries: dict[str, int] = {}

    def upsert(self, prefix: str, identity: int) -> None:
        self.entries[prefix] = identity

    def delete(self, prefix: str) -> bool:
        return self.entries.pop(prefix, None) is not None


class FakePolicyMap:
    def __init__(self, log: list[str]) -> None:
        self.entries: dict[int, set[PolicyEntry]] = {}
        self.log = log

    def set_endpoint_policy(self, lxc_id: int, entries: Iterable[PolicyEntry]) -> tuple[int, int]:
        self.entries[lxc_id] = set(entries)
        self.log.append(f"policy {lxc_id}")
        return len(self.entries[lxc_id]), 0

    def delete_endpoint(self, lxc_id: int) -> int:
        return len(self.entries.pop(lxc_id, set()))

    def endpoint_entries(self, lxc_id: int) -> list[PolicyEntry]:
        return list(self.entries.get(lxc_id, set()))

    def check_fits(self, changes) -> None:
        return None


class FakeEndpointMap:
    def __init__(self, log: list[str]) -> None:
        self.entries: dict[int, EndpointInfo] = {}
        self.log = log

    def upsert(self, ep: EndpointInfo) -> None:
        self.entries[ep.ifindex] = ep
        self.log.append(f"lxc {ep.lxc_id}")

    def delete(self, ifindex: int, ipv4: str | None = None, ipv6: str | None = None) -> None:
        self.entries.pop(ifindex, None)


class FakeCT:
    def __init__(self) -> None:
        self.flushed: list[tuple[str | None, ...]] = []

    def flush_addresses(self, *addrs: str | None) -> int:
        self.flushed.append(addrs)
        return 0


class FakeCTBudget:
    def __init__(self) -> None:
        self.reset_ids: list[int] = []

    def reset(self, lxc_id: int) -> None:
        self.reset_ids.append(lxc_id)


class FakeMaps:
    def __init__(self) -> None:
        self.log: list[str] = []
        self.policy = FakePolicyMap(self.log)
        self.endpoints = FakeEndpointMap(self.log)
        self.ct = FakeCT()
        self.ct_budget = FakeCTBudget()


class FakeDatapath:
    def __init__(self) -> None:
        self.maps = FakeMaps()
        self.attached: list[int] = []

    async def attach_async(self, ifindex: int) -> float:
        self.attached.append(ifindex)
        return 0.0


class Agent:
    """The daemon's wiring of the policy side, in the same order."""

    def __init__(self, store, allocator: IdentityAllocator, proxy=None) -> None:
        self.store, self.allocator = store, allocator
        self.ipcache_map = FakeIPCacheMap()
        self.dp = FakeDatapath()
        self.ipcache = IPCache(store, self.ipcache_map)
        self.identities = IdentityCache(allocator, self.ipcache)
        self.policy = PolicyManager(store, self.ipcache, self.identities, "default")
        self.regen = Regenerator(self.policy, allocator, self.identities, self.ipcache, self.dp, proxy=proxy)

    async def start(self) -> "Agent":
        await self.ipcache.start([HOST_IP])
        await self.policy.start()
        return self


@contextlib.asynccontextmanager
async def running_agent(store, proxy=None) -> AsyncIterator[Agent]:
    allocator = IdentityAllocator(store, "unit")
    await allocator.start()
    a = await Agent(store, allocator, proxy=proxy).start()
    try:
        yield a
    finally:
        await a.regen.close()
        await allocator.close()


@pytest.fixture
async def agent(store):
    async with running_agent(store) as a:
        yield a


def _endpoint(eid: int, ipv4: str, labels: list[str]) -> Endpoint:
    return Endpoint(id=eid, docker_endpoint_id=f"{eid:064d}", docker_network_id="n" * 64, ifname=f"lxc{eid}",
                    ifindex=100 + eid, peer_ifname=f"tmp{eid}", mac="02:00:00:00:00:01",
                    host_mac="02:00:00:00:00:02", ipv4=ipv4, labels=labels, state=State.WAITING_FOR_IDENTITY)


async def _created(agent: Agent, ep: Endpoint) -> None:
    """The endpoint handed over with its labels known (as restore does); its
    identity is allocated in the background."""
    await agent.regen.endpoint_created(ep)
    assert await agent.regen.wait_for_identity(ep, 5.0)


def _rule(selected: str, peer: dict) -> bytes:
    return json.dumps([{"endpointSelector": {"matchLabels": {"id": selected}},
                        "ingress": [peer]}]).encode()


async def test_start_writes_world_and_host(agent) -> None:
    assert agent.ipcache_map.entries == {"0.0.0.0/0": reserved.WORLD, "::/0": reserved.WORLD,
                                         f"{HOST_IP}/32": reserved.HOST}


async def test_created_endpoint_gets_identity_ipcache_and_flags_after_allows(agent) -> None:
    await agent.policy.import_rules(_rule("a", {"fromEndpoints": [{"matchLabels": {"id": "b"}}]}))
    b = _endpoint(2, "10.2.0.3", ["container:id=b"])
    a = _endpoint(1, "10.2.0.2", ["container:id=a"])
    await _created(agent, b)
    agent.dp.maps.log.clear()
    await _created(agent, a)
    assert a.state == State.READY and a.identity >= reserved.MIN_ALLOCATED
    assert agent.ipcache_map.entries["10.2.0.2/32"] == a.identity
    assert agent.dp.maps.policy.entries[1] == {PolicyEntry(identity=b.identity, direction="ingress")}
    info = agent.dp.maps.endpoints.entries[101]
    assert (info.sec_identity, info.ingress_enforced, info.egress_enforced) == (a.identity, True, False)
    own = [line for line in agent.dp.maps.log if line.endswith(" 1")]
    assert own[:2] == ["policy 1", "lxc 1"] and own[-2:] == ["policy 1", "lxc 1"]
    assert all(own[i - 1] == "policy 1" for i, line in enumerate(own) if line == "lxc 1")  # allows before flags
    assert agent.dp.attached == [102, 101]


async def test_cidr_rule_gets_local_identity_in_ipcache_and_identity_cache(agent) -> None:
    a = _endpoint(1, "10.2.0.2", ["container:id=a"])
    await _created(agent, a)
    # The endpoint's own address keeps its identity even when a rule names it.
    await agent.policy.import_rules(_rule("a", {"fromCIDR": ["198.51.100.0/24", "10.2.0.2/32"]}))
    local = agent.ipcache_map.entries["198.51.100.0/24"]
    assert local > LOCAL_IDENTITY_BASE
    assert agent.ipcache_map.entries["10.2.0.2/32"] == a.identity
    ident = agent.identities.identity(local)
    assert ident is not None and "cidr:198.51.100.0/24" in ident.labels.to_strings()
    assert PolicyEntry(identity=local, direction="ingress") in agent.dp.maps.policy.entries[1]
    assert a.policy_revision == agent.policy.revision

    await agent.policy.delete_rules([], all=True)
    assert "198.51.100.0/24" not in agent.ipcache_map.entries
    assert agent.identities.identity(local) is None
    assert agent.ipcache_map.entries["10.2.0.2/32"] == a.identity


async def test_deleted_endpoint_leaves_no_map_state(agent) -> None:
    await agent.policy.import_rules(_rule("a", {"fromCIDR": ["10.2.0.2/32"]}))
    a = _endpoint(1, "10.2.0.2", ["container:id=a"])
    await _created(agent, a)
    agent.dp.maps.ct.flushed.clear()  # (the switch from reserved:init flushed too)
    await agent.regen.endpoint_deleted(a)
    assert 1 not in agent.dp.maps.policy.entries and 101 not in agent.dp.maps.endpoints.entries
    # The address falls back to the CIDR identity a rule gave it.
    assert agent.ipcache_map.entries["10.2.0.2/32"] > LOCAL_IDENTITY_BASE
    assert agent.dp.maps.ct.flushed == [("10.2.0.2",)]
    assert agent.dp.maps.ct_budget.reset_ids == [1]  # the id's next endpoint starts afresh


async def test_enforcement_mode_reaches_every_endpoint(agent) -> None:
    a = _endpoint(1, "10.2.0.2", ["container:id=a"])
    await _created(agent, a)
    assert not agent.dp.maps.endpoints.entries[101].ingress_enforced
    await agent.policy.set_enforcement("always")
    assert agent.dp.maps.endpoints.entries[101].ingress_enforced
    assert agent.dp.maps.policy.entries[1] == set()


async def test_identity_allocated_elsewhere_regenerates_selecting_endpoints(agent, store) -> None:
    await agent.policy.import_rules(_rule("a", {"fromEndpoints": [{"matchLabels": {"id": "late"}}]}))
    a = _endpoint(1, "10.2.0.2", ["container:id=a"])
    await _created(agent, a)
    assert agent.dp.maps.policy.entries[1] == set()
    other = IdentityAllocator(store, "other-node")
    await other.start()
    try:
        late = await other.allocate(Labels.parse(["container:id=late"]))
        wanted = {PolicyEntry(identity=late.id, direction="ingress")}
        for _ in range(100):
            if agent.dp.maps.policy.entries[1] == wanted:
                break
            await asyncio.sleep(0.05)
        assert agent.dp.maps.policy.entries[1] == wanted
    finally:
        await other.close()


async def test_policy_change_runs_with_the_garbage_collector_on(agent) -> None:
    """The collector is off only while a document is parsed: the change itself
    (map writes in threads, the store, other requests meanwhile) runs with it on."""
    import gc

    seen: list[bool] = []

    class Probe:
        async def apply_policy(self, change, commit) -> None:
            seen.append(gc.isenabled())
            await asyncio.sleep(0)
            seen.append(gc.isenabled())
            await commit()
    agent.policy.subscribe(Probe())
    assert gc.isenabled()
    await agent.policy.import_rules(_rule("a", {"fromEntities": ["host"]}))
    await agent.policy.delete_rules([], all=True)
    assert seen == [True] * 4 and gc.isenabled()


async def test_identity_lookup_builds_no_other_identity(agent, monkeypatch) -> None:
    """`cilium identity get N` looks N up: it does not build every identity
    (with thousands of CIDR identities of ~33 labels each) to return one."""
    await agent.policy.import_rules(_rule("a", {"fromCIDR": ["198.51.100.0/24"]}))
    local = agent.ipcache_map.entries["198.51.100.0/24"]
    allocated = await agent.allocator.allocate(Labels.parse(["container:id=a"]))

    def everything(*_a, **_kw):
        raise AssertionError("built every identity to look up one")
    monkeypatch.setattr(agent.ipcache, "local_identities", everything)
    monkeypatch.setattr(agent.identities, "identities", everything)
    assert "cidr:198.51.100.0/24" in agent.identities.identity(local).labels.to_strings()
    assert agent.identities.identity(allocated.id) == allocated
    assert agent.identities.identity(reserved.HOST).labels.to_strings() == ["reserved:host"]
    assert agent.identities.identity(reserved.MIN_ALLOCATED + 999) is None


async def test_moved_identity_reaches_the_ipcache_from_a_worker_thread(agent, monkeypatch) -> None:
    """An identity the allocator moved after a conflict: the endpoint follows
    it, and the ipcache map writes (one per address, for every endpoint that
    moved) run off the event loop."""
    import threading

    a = _endpoint(1, "10.2.0.2", ["container:id=a"])
    await _created(agent, a)
    old = a.identity
    writers: list[str] = []
    real_upsert = agent.ipcache_map.upsert

    def upsert(prefix: str, identity: int) -> None:
        writers.append(threading.current_thread().name)
        real_upsert(prefix, identity)
    monkeypatch.setattr(agent.ipcache_map, "upsert", upsert)
    moved = {old: old + 100}
    real_current = agent.allocator.current
    monkeypatch.setattr(agent.allocator, "current",
                        lambda ident: type(ident)(moved.get(ident.id, ident.id), ident.labels)
                        if ident.id in moved else real_current(ident))
    await agent.regen.regenerate_all()
    assert a.identity == old + 100 and agent.ipcache_map.entries["10.2.0.2/32"] == old + 100
    assert writers and threading.main_thread().name not in writers
    assert agent.dp.maps.endpoints.entries[101].sec_identity == old + 100
