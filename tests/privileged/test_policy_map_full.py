"""A full policy map never leaves policy half-applied (issue 6 item 7), on the
real kernel: the datapath is built with a 32-entry ``cilium_policy`` and the
agent's own policy manager and regenerator write it.

* An import that would not fit is refused before any map is touched: maps,
  revision and the persisted rules stay as they were.
* When the kernel itself refuses part-way (another writer filled the map),
  what was written is undone, on every endpoint already done.
* A retry after a refusal adds the rules once: no duplicates in the
  repository or the map.
"""

from __future__ import annotations

import json

import pytest

from docker_cilium.datapath.bpf import BPFError
from docker_cilium.datapath.loader import Datapath, compile_datapath
from docker_cilium.datapath.maps import policymap
from docker_cilium.datapath.maps.policymap import POLICY_MAP, PolicyEntry, PolicyMap, PolicyMapFull
from docker_cilium.endpoint.model import Endpoint, State
from docker_cilium.endpoint.regenerator import Regenerator
from docker_cilium.identity.allocator import IdentityAllocator
from docker_cilium.identity.cache import IdentityCache
from docker_cilium.ipcache import IPCache
from docker_cilium.kvstore import keys
from docker_cilium.kvstore.sqlite import SQLiteBackend
from docker_cilium.policy.manager import PolicyManager

MAP_SIZE = 32


class MapsOnly:
    """The loaded datapath as the regenerator sees it, minus attaching programs
    to the (made-up) endpoint interfaces: the maps are the real pinned ones."""

    def __init__(self, dp: Datapath) -> None:
        self.maps = dp.maps

    async def attach_async(self, ifindex: int) -> float:
        return 0.0


@pytest.fixture(scope="module")
def small_object(tmp_path_factory):
    return compile_datapath(out_dir=tmp_path_factory.mktemp("bpfobj-small"), defines={"POLICY_MAP_SIZE": MAP_SIZE})


@pytest.fixture
async def agent(small_object, pin_root, tmp_path):
    dp = Datapath.load(small_object, pin_root=pin_root)
    store = SQLiteBackend(str(tmp_path / "node.db"))
    await store.connect()
    allocator = IdentityAllocator(store, "priv")
    await allocator.start()
    ipcache = IPCache(store, dp.maps.ipcache)
    await ipcache.start([])
    identities = IdentityCache(allocator, ipcache)
    policy = PolicyManager(store, ipcache, identities, "default")
    await policy.start()
    regen = Regenerator(policy, allocator, identities, ipcache, MapsOnly(dp))
    try:
        for eid, label in ((11, "app"), (12, "app"), (13, "client")):
            ep = Endpoint(id=eid, docker_endpoint_id=f"{eid:064d}", docker_network_id="n" * 64, ifname=f"lxc{eid}",
                          ifindex=100000 + eid, peer_ifname=f"tmp{eid}", mac="02:00:00:00:00:01",
                          host_mac="02:00:00:00:00:02", ipv4=f"10.250.0.{eid}", labels=[f"container:id={label}"],
                          state=State.WAITING_FOR_IDENTITY)
            await regen.endpoint_created(ep)
            assert await regen.wait_for_identity(ep, 5.0)  # allocated in the background
        yield policy, regen, dp, store
    finally:
        await regen.close()
        await allocator.close()
        await store.close()
        dp.close()


def rule(name: str, ports: range) -> bytes:
    return json.dumps([{
        "labels": [{"key": "name", "value": name}],
        "endpointSelector": {"matchLabels": {"id": "app"}},
        "ingress": [{"fromEndpoints": [{"matchLabels": {"id": "client"}}],
                     "toPorts": [{"ports": [{"port": str(p), "protocol": "TCP"} for p in ports]}]}],
    }]).encode()


def record_writes(dp: Datapath, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int | None]]:
    """Every update of the kernel policy map from now on, single or in a
    batch (one per key the kernel took): ("ok", lxc_id) or ("refused", None)."""
    m, log = dp.maps.raw[POLICY_MAP], []
    update = m.update
    real_batch = policymap._update_batch

    def batch():  # type: ignore[no-untyped-def]
        fn = real_batch()

        def counted_batch(fd, keys, values, count, opts):  # type: ignore[no-untyped-def]
            asked = count._obj.value
            ret = fn(fd, keys, values, count, opts)
            log.extend(("ok", keys[i].lxc_id) for i in range(asked if ret >= 0 else count._obj.value))
            if ret < 0:
                log.append(("refused", None))
            return ret
        return counted_batch

    monkeypatch.setattr(policymap, "_update_batch", batch)

    def counted(key, value, *args, **kw):
        try:
            update(key, value, *args, **kw)
        except BPFError:
            log.append(("refused", None))
            raise
        log.append(("ok", key.lxc_id))

    m.update = counted
    return log


def map_state(dp: Datapath) -> list[tuple]:
    """Every entry of the kernel map (markers included), read back from the kernel."""
    return [(s.lxc_id, s.identity, s.direction, s.dport, s.proto) for s in dp.maps.policy.dump(include_markers=True)]


async def test_import_that_does_not_fit_is_refused_before_any_write(agent):
    policy, regen, dp, store = agent
    assert dp.maps.policy.max_entries == MAP_SIZE
    await policy.import_rules(rule("base", range(80, 84)))  # 4 ports + marker on 2 endpoints: 10 entries
    before, rev, saved = map_state(dp), policy.revision, await store.get(keys.POLICY_RULES)
    assert len(before) == 10
    with pytest.raises(PolicyMapFull) as exc:
        await policy.import_rules(rule("big", range(1000, 1012)))  # +12 on each: 34 > 32
    assert exc.value.status == 507
    assert "endpoint 12" in exc.value.message and f"of {MAP_SIZE} free" in exc.value.message
    assert map_state(dp) == before
    assert policy.revision == rev and await store.get(keys.POLICY_RULES) == saved
    assert [r.label_strings for r in policy.repo.rules] == [("unspec:name=base",)]
    assert {ep.policy_revision for ep in regen.endpoints.values()} == {rev}
    assert {ep.state for ep in regen.endpoints.values()} == {State.READY}


async def test_kernel_refusal_part_way_is_undone_on_every_endpoint(agent, monkeypatch):
    policy, regen, dp, store = agent
    await policy.import_rules(rule("base", range(80, 84)))
    # Another writer fills the map behind the agent's back: its own check
    # passes, and the kernel refuses part-way through the second endpoint.
    other = PolicyMap(dp.maps.raw[POLICY_MAP])
    other.set_endpoint_policy(999, [PolicyEntry(identity=5000 + i) for i in range(17)])  # 5 left free
    before, rev, saved = map_state(dp), policy.revision, await store.get(keys.POLICY_RULES)
    writes = record_writes(dp, monkeypatch)
    with pytest.raises(PolicyMapFull) as exc:
        await policy.import_rules(rule("more", range(2000, 2004)))  # +4 on each endpoint
    assert "is full" in exc.value.message
    # Part-way: the kernel took the 5 free slots (all 4 of one endpoint, 1 of
    # the other) before refusing; every write after the refusal is an undo.
    refused = writes.index(("refused", None))
    assert writes[:refused] == [("ok", lxc) for lxc in [writes[0][1]] * 4 + [writes[4][1]]]
    assert {writes[0][1], writes[4][1]} == {11, 12}
    assert map_state(dp) == before
    assert policy.revision == rev and await store.get(keys.POLICY_RULES) == saved

    # The retry, once there is room, adds the rule once: no duplicates.
    other.delete_endpoint(999)
    await policy.import_rules(rule("more", range(2000, 2004)))
    assert policy.revision == rev + 1
    assert [r.label_strings for r in policy.repo.rules] == [("unspec:name=base",), ("unspec:name=more",)]
    doc = json.loads(await store.get(keys.POLICY_RULES))
    assert len(doc["repository"]["rules"]) == 2
    client = regen.endpoints[13].identity
    for eid in (11, 12):
        ports = sorted(s.dport for s in dp.maps.policy.dump(eid))
        assert ports == [80, 81, 82, 83, 2000, 2001, 2002, 2003]
        assert {s.identity for s in dp.maps.policy.dump(eid)} == {client}
    assert len(map_state(dp)) == 2 * (8 + 1)
