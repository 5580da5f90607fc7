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
from docker_cilium.endpoint.model import Endpoint, State
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
        self.hang: asyncio.Event | None = None  # calls wait for it, then fail (an etcd timing out)
        self.hung = 0

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if name not in self.CALLS:
            return attr

        async def call(*args: Any, **kw: Any) -> Any:
            if self.hang is not None:
                gate = self.hang
                self.hung += 1
                await gate.wait()
                raise KVStoreError(f"{name}: timed out")
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
    assert node.regen.pending_report() == {"waiting-for-identity": [], "init": [ep.id]}

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
    assert node.regen.pending_report() == {"waiting-for-identity": [ep.id], "init": []}
    assert _pending(node.regen.pending_report()) == f"1 waiting-for-identity ({ep.id}), 0 init"
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
    # Flows the init policy let open face the real policy: flushed once the
    # maps carry the new identity (a worker thread, after the state is ready).
    await wait_for(lambda: ep.state == State.READY and (IP,) in node.dp.maps.ct.flushed)
    assert ep.identity >= reserved.MIN_ALLOCATED and node.referenced("container:id=app")
    node.assert_consistent(ep)
    info = node.lxc(ep)
    assert (info.ingress_enforced, info.egress_enforced) == (False, False)  # no rule selects id=app
    assert node.regen.pending_report() == {"waiting-for-identity": [], "init": []}


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


async def test_recreated_endpoint_is_not_blocked_by_the_deleted_ones_retry(node) -> None:
    """A retry still inside the store call when its endpoint is deleted must
    not stand in for the retry of a new endpoint that got the same ID."""
    ep = await node.create()
    node.kv.down = True
    await node.mgr.update_container(f"{1:064d}", "c" * 64, "app", ["container:id=app"])
    node.kv.hang = stalled = asyncio.Event()
    await wait_for(lambda: node.kv.hung == 1)  # the retry waits on the store
    await node.mgr.delete_endpoint(NETWORK, ep.docker_endpoint_id)
    node.kv.hang = None
    again = await node.create()
    assert again.id == ep.id and again is not ep
    await node.mgr.update_container(f"{1:064d}", "d" * 64, "app", ["container:id=app2"])
    assert again.state == State.WAITING_FOR_IDENTITY
    stalled.set()  # the deleted endpoint's attempt fails and it stops
    node.kv.down = False
    await wait_for(lambda: again.state == State.READY)
    assert again.identity >= reserved.MIN_ALLOCATED and node.referenced("container:id=app2")
    assert not node.referenced("container:id=app")
    node.assert_consistent(again)


def restored(eid: int, ip: str, identity: int) -> Endpoint:
    return Endpoint.from_record(Endpoint(
        id=eid, docker_endpoint_id=f"{eid:064d}", docker_network_id=NETWORK, ifname=f"lxc{eid}", ifindex=eid * 10,
        peer_ifname=f"tmp{eid}", mac="02:00:00:00:00:07", host_mac="02:00:00:00:00:70", ipv4=ip,
        container_id="c" * 64, labels=[f"container:id=app{eid}"], identity=identity).to_record())


async def test_restore_with_a_hanging_store_stalls_neither_restore_nor_policy(node) -> None:
    """Allocation runs outside the regenerator's lock: restoring endpoints
    and importing policy go on while the store does not answer."""
    node.kv.hang = stalled = asyncio.Event()
    eps = [restored(7, IP, 300), restored(8, "10.2.0.3", 301)]
    for ep in eps:
        await asyncio.wait_for(node.regen.endpoint_created(ep), 2.0)
        assert ep.state == State.WAITING_FOR_IDENTITY
        node.assert_consistent(ep)
    await asyncio.wait_for(node.policy.import_rules(init_rule("ingress", {"fromEntities": ["host"]})), 2.0)
    assert all(ep.policy_revision == node.policy.revision for ep in eps)
    assert node.regen.pending_report() == {"waiting-for-identity": [7, 8], "init": []}
    node.kv.hang = None
    stalled.set()
    await wait_for(lambda: all(ep.state == State.READY for ep in eps))
    assert node.referenced("container:id=app7") and node.referenced("container:id=app8")
    assert node.regen.pending_report() == {"waiting-for-identity": [], "init": []}


async def test_pending_report_follows_the_held_identity_not_the_state(node) -> None:
    """Status lists an endpoint waiting for its identity even when a failed
    regeneration made it not-ready."""
    ep = await node.create()
    node.kv.down = True
    await node.mgr.update_container(f"{1:064d}", "c" * 64, "app", ["container:id=app"])
    ep.set_state(State.NOT_READY, "regeneration failed")
    assert node.regen.pending_report() == {"waiting-for-identity": [ep.id], "init": []}


async def test_allocation_cancelled_after_its_reference_was_written_leaves_no_reference(node) -> None:
    """The caller of a cancelled allocation never learns the number, so it
    can never release it: the reference already in the store goes too."""
    from docker_cilium.identity.kvbackend import VALUE_PREFIX

    inner_get, entered = node.kv.inner.get, asyncio.Event()

    async def get_hanging(key: str) -> bytes | None:
        entered.set()
        await asyncio.Event().wait()
        return await inner_get(key)
    node.kv.inner.get = get_hanging  # the read after the reference write never answers
    task = asyncio.create_task(node.allocator.allocate(Labels.parse(["container:id=app"])))
    await asyncio.wait_for(entered.wait(), 2.0)
    assert [k for k in await node.kv.inner.get_prefix(VALUE_PREFIX)]  # the reference is written
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await node.kv.inner.get_prefix(VALUE_PREFIX) == {}
    assert not node.referenced("container:id=app")


async def test_restore_with_kv_down_keeps_peers_allowing_the_restored_identities(node) -> None:
    """While the store is down, a restored endpoint's peers still allow the
    number it holds (the one in its ipcache entry), as their maps did before
    the restart: restoring must not cut traffic between endpoints whose
    identities the allocator cannot confirm yet."""
    await node.policy.import_rules(json.dumps([{"endpointSelector": {"matchLabels": {"id": "app8"}},
                                                "ingress": [{"fromEndpoints": [{"matchLabels": {"id": "app7"}}]}]}]
                                              ).encode())
    node.kv.down = True
    a, b = restored(7, IP, 300), restored(8, "10.2.0.3", 301)
    for ep in (b, a):  # the selecting endpoint first: it learns of 300 after its own restore
        await node.regen.endpoint_created(ep)
        node.assert_consistent(ep)
    # Both regenerations settle (a loaded machine may still be mid-way when the entry appears).
    await wait_for(lambda: PolicyEntry(identity=300, direction="ingress") in node.policy_entries(b)
                   and a.state == b.state == State.WAITING_FOR_IDENTITY)
    assert node.kv.down
    await node.policy.import_rules(init_rule("ingress", {"fromEntities": ["host"]}))  # a policy change meanwhile
    assert PolicyEntry(identity=300, direction="ingress") in node.policy_entries(b)
    node.kv.down = False
    await wait_for(lambda: a.state == State.READY and b.state == State.READY and not node.regen.pending_report()[
        "waiting-for-identity"] and node.policy_entries(b) == {PolicyEntry(identity=a.identity, direction="ingress")})
    node.assert_consistent(a)
    assert not node.allocator._restored  # every restored number now held by reference


class Events:
    """The agent events the regenerator emits, in order."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, int]] = []

    def agent_event(self, subtype: str, message: dict[str, Any]) -> None:
        self.seen.append((subtype, message["id"]))


async def test_create_rolled_back_before_the_datapath_knew_it_emits_no_endpoint_event(node, monkeypatch) -> None:
    """A create that fails before the regenerator was told (the link cannot be
    made) announces nothing: no `Endpoint deleted` for an endpoint no
    `Endpoint created` announced. One that fails after announces both."""
    node.regen.monitor = events = Events()

    async def no_link(*args: Any) -> Any:
        raise OSError("link: no room")
    real = node.mgr.links.create_endpoint_link
    monkeypatch.setattr(node.mgr.links, "create_endpoint_link", no_link)
    with pytest.raises(OSError):
        await node.create()
    assert events.seen == []
    monkeypatch.setattr(node.mgr.links, "create_endpoint_link", real)
    ep = await node.create()
    await node.mgr.delete_endpoint(NETWORK, ep.docker_endpoint_id)
    kinds = [kind for kind, _ in events.seen]
    assert kinds[0] == "Endpoint created" and kinds[-1] == "Endpoint deleted" and kinds.count("Endpoint deleted") == 1
