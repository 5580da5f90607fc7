"""An endpoint without its real identity passes no traffic, and gets it later.

The real EndpointManager, Regenerator, identity allocator (on SQLite),
identity cache, ipcache and policy manager; in-memory maps stand in for the
pinned BPF maps (tests/privileged and tests/e2e run the real ones). The KV
store is the real SQLite store behind a switch that makes it unreachable,
as an etcd that is down.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from docker_cilium.cli.status import _pending
from docker_cilium.datapath.maps.lxcmap import EndpointInfo
from docker_cilium.datapath.maps.policymap import PolicyEntry
from docker_cilium.endpoint.manager import EP_PREFIX, EndpointManager
from docker_cilium.endpoint.model import Endpoint, State, identity_pending
from docker_cilium.endpoint.regenerator import Regenerator
from docker_cilium.identity import reserved
from docker_cilium.identity.allocator import IdentityAllocator
from docker_cilium.identity.cache import IdentityCache
from docker_cilium.identity.labels import Labels
from docker_cilium.ipam.allocator import IPAM
from docker_cilium.ipcache import IPCache
from docker_cilium.kvstore import KVStoreError
from docker_cilium.kvstore.sqlite import SQLiteBackend
from docker_cilium.policy.manager import PolicyManager
from tests.unit.fakes import FakeLinks
from tests.unit.test_regenerator import HOST_IP, FakeDatapath, FakeIPCacheMap
from tests.unit.unit_daemon import NETWORK, NODE

IP = "10.2.0.2"


class UnreachableStore:
    """The real store, but every call fails while ``down`` (etcd stopped)."""

    CALLS = {"get", "get_prefix", "put", "create_only", "compare_and_delete", "compare_and_swap", "delete"}

    def __init__(self, inner: SQLiteBackend) -> None:
        self.inner = inner
        self.down = False
        self.refused = 0

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if name not in self.CALLS:
            return attr

        async def call(*args: Any, **kw: Any) -> Any:
            if self.down:
                self.refused += 1
                raise KVStoreError(f"{name}: connection refused")
            return await attr(*args, **kw)
        return call


class Node:
    """The agent's endpoint and policy side, wired as the daemon wires it."""

    def __init__(self, store: SQLiteBackend, kv: UnreachableStore, allocator: IdentityAllocator) -> None:
        self.store, self.kv, self.allocator = store, kv, allocator
        self.dp = FakeDatapath()
        self.ipcache_map = FakeIPCacheMap()
        self.ipcache = IPCache(store, self.ipcache_map)
        self.identities = IdentityCache(allocator, self.ipcache)
        self.policy = PolicyManager(store, self.ipcache, self.identities, "default")
        self.regen = Regenerator(self.policy, allocator, self.identities, self.ipcache, self.dp,
                                 retry_base=0.05, retry_max=0.2)
        self.mgr = EndpointManager(store, FakeLinks(), None, NODE, IPAM(store, NODE), 1500,  # type: ignore[arg-type]
                                   self.regen)

    async def start(self) -> "Node":
        await self.ipcache.start([HOST_IP])
        await self.policy.start()
        await self.mgr.create_network(NETWORK, [{"AddressSpace": "CiliumLocal", "Pool": "0.0.0.0/0",
                                                 "Gateway": f"{NODE.router4}/32"}], [], {})
        return self

    async def create(self, n: int = 1, ip: str = IP) -> Endpoint:
        ep, _ = await self.mgr.create_endpoint(NETWORK, f"{n:064d}", f"{ip}/32", "", "")
        return ep

    def lxc(self, ep: Endpoint) -> EndpointInfo:
        return self.dp.maps.endpoints.entries[ep.ifindex]

    def policy_entries(self, ep: Endpoint) -> set[PolicyEntry]:
        return self.dp.maps.policy.entries.get(ep.id, set())

    def referenced(self, *labels: str) -> bool:
        return Labels.parse(labels).sorted_key() in self.allocator._local

    def assert_consistent(self, ep: Endpoint) -> None:
        """Identity, ipcache and endpoint map agree, whatever happened."""
        info = self.lxc(ep)
        assert info.sec_identity == ep.identity
        assert self.ipcache_map.entries[f"{ep.ipv4}/32"] == ep.identity


@pytest.fixture
async def node(store, tmp_path):
    inner = SQLiteBackend(str(tmp_path / "kvstore.db"))
    await inner.connect()
    kv = UnreachableStore(inner)
    allocator = IdentityAllocator(kv, "unit")  # type: ignore[arg-type]
    await allocator.start()
    n = await Node(store, kv, allocator).start()
    yield n
    await n.regen.close()
    await allocator.close()
    await inner.close()


async def wait_for(cond, timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.02)):
        if cond():
            return
        await asyncio.sleep(0.02)
    assert cond()


def init_rule(section: str, peer: dict) -> bytes:
    return json.dumps([{"endpointSelector": {"matchLabels": {"reserved:init": ""}},
                        section: [peer]}]).encode()


async def test_new_endpoint_holds_init_and_denies_both_directions(node) -> None:
    ep = await node.create()
    info = node.lxc(ep)
    assert (ep.identity, info.sec_identity) == (reserved.INIT, reserved.INIT)
    assert (info.ingress_enforced, info.egress_enforced) == (True, True)
    assert node.policy_entries(ep) == set()
    assert node.dp.attached == [ep.ifindex]  # programs attached only after the deny is in
    assert identity_pending(node.mgr.endpoints.values()) == {"waiting-for-identity": [], "init": [ep.id]}

    # Beyond what a rule selecting reserved:init allows.
    await node.policy.import_rules(init_rule("egress", {"toEntities": ["host"]}))
    assert node.policy_entries(ep) == {PolicyEntry(identity=reserved.HOST, direction="egress")}
    assert (node.lxc(ep).ingress_enforced, node.lxc(ep).egress_enforced) == (True, True)
    # `never` enforces nothing, init included.
    await node.policy.set_enforcement("never")
    assert (node.lxc(ep).ingress_enforced, node.lxc(ep).egress_enforced) == (False, False)
    await node.policy.set_enforcement("default")
    await node.mgr.update_options(ep, {"PolicyEnforcement": "never"})
    assert (node.lxc(ep).ingress_enforced, node.lxc(ep).egress_enforced) == (False, False)


async def test_kv_down_at_label_time_waits_closed_then_retries(node) -> None:
    ep = await node.create()
    node.kv.down = True
    await node.mgr.update_container(f"{1:064d}", "c" * 64, "app", ["container:id=app"])  # no error: retried

    assert ep.state == State.WAITING_FOR_IDENTITY and ep.to_model()["state"] == "waiting-for-identity"
    assert ep.labels == ["container:id=app"]  # kept, not rolled back
    saved = json.loads(await node.store.get(EP_PREFIX + ep.docker_endpoint_id))
    assert saved["labels"] == ["container:id=app"]
    assert identity_pending(node.mgr.endpoints.values()) == {"waiting-for-identity": [ep.id], "init": []}
    assert _pending(identity_pending(node.mgr.endpoints.values())) == f"1 waiting-for-identity ({ep.id}), 0 init"
    # Closed meanwhile: still reserved:init, both directions enforced, nothing allowed.
    info = node.lxc(ep)
    assert (info.sec_identity, info.ingress_enforced, info.egress_enforced) == (reserved.INIT, True, True)
    assert node.policy_entries(ep) == set()
    node.assert_consistent(ep)

    # Retried with backoff while the store is down, not dropped.
    refused = node.kv.refused
    await asyncio.sleep(0.6)
    assert node.kv.refused >= refused + 2
    assert ep.state == State.WAITING_FOR_IDENTITY and ep.identity == reserved.INIT
    # A policy change regenerates it, closed still, and it keeps saying it waits.
    await node.policy.import_rules(init_rule("ingress", {"fromEntities": ["host"]}))
    assert ep.state == State.WAITING_FOR_IDENTITY and node.lxc(ep).sec_identity == reserved.INIT

    node.kv.down = False
    await wait_for(lambda: ep.state == State.READY)
    assert ep.identity >= reserved.MIN_ALLOCATED and node.referenced("container:id=app")
    node.assert_consistent(ep)
    info = node.lxc(ep)
    assert (info.ingress_enforced, info.egress_enforced) == (False, False)  # no rule selects id=app
    assert (IP,) in node.dp.maps.ct.flushed  # flows the init policy let open face the real policy
    assert identity_pending(node.mgr.endpoints.values()) == {"waiting-for-identity": [], "init": []}


async def test_container_without_labels_gets_a_real_identity(node) -> None:
    """Known but unlabelled: the empty label set's identity, not reserved:init."""
    ep = await node.create()
    await node.mgr.update_container(f"{1:064d}", "c" * 64, "plain", [])
    assert ep.state == State.READY and ep.identity >= reserved.MIN_ALLOCATED
    assert (node.lxc(ep).ingress_enforced, node.lxc(ep).egress_enforced) == (False, False)
    node.assert_consistent(ep)


async def test_switch_whose_map_write_fails_rolls_back_then_retries(node) -> None:
    """Allocation works, writing the endpoint map does not: identity, ipcache,
    maps and references stay the old ones until the retry gets through."""
    await node.policy.import_rules(json.dumps([{"endpointSelector": {"matchLabels": {"id": "a"}},
                                                "ingress": [{"fromEntities": ["host"]}]}]).encode())
    ep = await node.create()
    await node.mgr.update_container(f"{1:064d}", "c" * 64, "a", ["container:id=a"])
    old = ep.identity
    assert ep.state == State.READY and old >= reserved.MIN_ALLOCATED
    old_policy = node.policy_entries(ep)
    assert old_policy == {PolicyEntry(identity=reserved.HOST, direction="ingress")}

    endpoints_map = node.dp.maps.endpoints
    real_upsert = endpoints_map.upsert
    failures = []

    def upsert_failing_once(info: EndpointInfo) -> None:
        if not failures:
            failures.append(info.sec_identity)
            raise OSError(28, "No space left on device")
        real_upsert(info)
    endpoints_map.upsert = upsert_failing_once  # type: ignore[method-assign]
    await node.mgr.update_container(f"{1:064d}", "c" * 64, "a", ["container:id=b"])

    assert failures and failures[0] != old
    assert ep.identity == old and ep.state == State.WAITING_FOR_IDENTITY
    node.assert_consistent(ep)
    assert node.policy_entries(ep) == old_policy  # the old identity's allows again
    assert node.referenced("container:id=a")
    await wait_for(lambda: ep.state == State.READY)
    assert ep.identity == failures[0] != old
    node.assert_consistent(ep)
    assert node.policy_entries(ep) == set() and not node.lxc(ep).ingress_enforced
    assert node.referenced("container:id=b") and not node.referenced("container:id=a")


async def test_switch_whose_allocation_fails_keeps_the_old_identity(node) -> None:
    ep = await node.create()
    await node.mgr.update_container(f"{1:064d}", "c" * 64, "a", ["container:id=a"])
    old = ep.identity
    node.kv.down = True
    await node.mgr.update_labels(ep, ["container:role=web"], [])  # returns: retried in the background
    assert ep.identity == old and ep.state == State.WAITING_FOR_IDENTITY
    assert ep.effective_labels == ["container:id=a", "container:role=web"]
    node.assert_consistent(ep)
    assert node.referenced("container:id=a")
    node.kv.down = False
    await wait_for(lambda: ep.state == State.READY)
    assert ep.identity not in (old, reserved.INIT)
    node.assert_consistent(ep)
    assert node.referenced("container:id=a", "container:role=web") and not node.referenced("container:id=a")


async def test_deleted_while_waiting_stops_retrying_and_leaks_no_reference(node) -> None:
    ep = await node.create()
    node.kv.down = True
    await node.mgr.update_container(f"{1:064d}", "c" * 64, "app", ["container:id=app"])
    assert ep.state == State.WAITING_FOR_IDENTITY
    await node.mgr.delete_endpoint(NETWORK, ep.docker_endpoint_id)
    node.kv.down = False
    await asyncio.sleep(0.5)
    assert not node.referenced("container:id=app")
    assert node.regen._resolvers == {}
    assert ep.ifindex not in node.dp.maps.endpoints.entries


async def test_restore_with_kv_down_keeps_recorded_identity_and_retries(node) -> None:
    """Restore does not wait for the store: the number its record (and its
    maps from before the restart) carry stays until allocation gets through."""
    record = Endpoint(id=7, docker_endpoint_id="7" * 64, docker_network_id=NETWORK, ifname="lxc7", ifindex=70,
                      peer_ifname="tmp7", mac="02:00:00:00:00:07", host_mac="02:00:00:00:00:70", ipv4=IP,
                      container_id="c" * 64, labels=["container:id=app"], identity=300).to_record()
    ep = Endpoint.from_record(record)  # RESTORING
    node.kv.down = True
    await node.regen.endpoint_created(ep)
    assert ep.identity == 300 and ep.state == State.WAITING_FOR_IDENTITY
    node.assert_consistent(ep)
    node.kv.down = False
    await wait_for(lambda: ep.state == State.READY)
    assert ep.identity >= reserved.MIN_ALLOCATED and node.referenced("container:id=app")
    node.assert_consistent(ep)
    await node.regen.endpoint_deleted(ep)
    assert not node.referenced("container:id=app")  # the one reference taken, released
