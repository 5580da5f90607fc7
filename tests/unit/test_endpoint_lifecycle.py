"""Endpoint lifecycle under failures: deletes that fail half-way, networks that
cannot be plumbed, bad or half-written records at restore, dockerd's view.

The kernel is faked here (FakeLinks, a datapath that records its entries); the
same paths run against real netlink, BPF and dockerd in
tests/e2e/test_lifecycle.py and tests/privileged/test_endpoint_links.py.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import time

from docker_cilium.agent.lock import AgentLock, AlreadyRunning
from docker_cilium.datapath.link import host_ifname
from docker_cilium.endpoint.manager import EP_PREFIX, EndpointManager
from docker_cilium.endpoint.networks import NET_PREFIX
from docker_cilium.endpoint.model import Endpoint, State
from docker_cilium.endpoint.reconcile import DockerReconciler
from docker_cilium.errors import BadRequest, Conflict
from docker_cilium.ipam.allocator import IPAM
from docker_cilium.workloads.docker import DockerView
from tests.unit.unit_daemon import NODE  # 10.2.0.0/16
from tests.unit.fakes import FakeLinks

NET = "n" * 64
V4_DATA = [{"AddressSpace": "CiliumLocal", "Pool": "0.0.0.0/0", "Gateway": f"{NODE.router4}/32"}]


class RecordingDatapath:
    """DatapathHooks keeping the entries a real datapath would hold, per endpoint;
    ``fail_deletes`` deletions raise before anything is removed."""

    def __init__(self) -> None:
        self.entries: dict[int, tuple] = {}
        self.fail_deletes = 0

    async def endpoint_created(self, ep: Endpoint) -> None:
        self.entries[ep.id] = (ep.ifindex, ep.ipv4, ep.ipv6)
        ep.set_state(State.WAITING_TO_REGENERATE, "identity resolved")

    async def endpoint_changed(self, ep: Endpoint) -> None: ...
    async def regenerate(self, ep: Endpoint) -> None: ...

    async def endpoint_deleted(self, ep: Endpoint) -> None:
        if self.fail_deletes:
            self.fail_deletes -= 1
            raise OSError("map delete failed")
        self.entries.pop(ep.id, None)


async def _manager(store, links=None, hooks=None) -> EndpointManager:
    return EndpointManager(store, links or FakeLinks(), None, NODE, IPAM(store, NODE), 1400,  # type: ignore[arg-type]
                           hooks or RecordingDatapath())


async def test_delete_that_fails_once_is_finished_by_the_retry(store) -> None:
    dp = RecordingDatapath()
    mgr = await _manager(store, hooks=dp)
    await mgr.create_network(NET, V4_DATA, [], {})
    docker_id = "e" * 64
    ep, _ = await mgr.create_endpoint(NET, docker_id, "10.2.0.9/32", "", "")
    dp.fail_deletes = 1
    try:
        await mgr.delete_endpoint(NET, docker_id)
        raise AssertionError("the failing step did not fail")
    except OSError:
        pass
    # Still known, as disconnecting, in memory and in the store: the retry knows what to remove.
    assert mgr.endpoints[docker_id].state == State.DISCONNECTING
    assert json.loads(await store.get(EP_PREFIX + docker_id))["state"] == "disconnecting"
    assert await mgr.delete_endpoint(NET, docker_id) is True
    assert dp.entries == {}
    assert mgr.links.links == {} and mgr.links.routes == {}
    assert docker_id not in mgr.endpoints
    assert await store.get(EP_PREFIX + docker_id) is None
    assert not mgr.holds_address("10.2.0.9")


async def test_network_that_fails_to_plumb_is_not_saved(store) -> None:
    class BrokenHostDevice(FakeLinks):
        async def add_host_address(self, address: str) -> None:
            raise OSError("cilium_host is missing")

    mgr = await _manager(store, links=BrokenHostDevice())
    data = [{"AddressSpace": "LocalDefault", "Pool": "192.168.77.0/24", "Gateway": "192.168.77.1/24"}]
    try:
        await mgr.create_network("d" * 64, data, [], {})
        raise AssertionError("plumbing did not fail")
    except OSError:
        pass
    assert mgr.networks == {}
    assert await store.get_prefix(NET_PREFIX) == {}


def _record(docker_id: str, state: State, ipv4: str, eid: int) -> bytes:
    ep = Endpoint(id=eid, docker_endpoint_id=docker_id, docker_network_id=NET, ifname=f"lxc{eid}", ifindex=eid,
                  peer_ifname=f"tmp{eid}", mac="02:00:00:00:00:01", host_mac="02:00:00:00:00:02", ipv4=ipv4)
    ep.state = state
    return json.dumps(ep.to_record()).encode()


async def test_restore_isolates_each_record(store) -> None:
    good = json.dumps({"id": NET, "ipv6": False, "cilium_ipam": True}).encode()
    bad_net = json.dumps({"id": "b" * 64, "ipv6": False, "cilium_ipam": False, "gateway4": "not-an-ip"}).encode()
    await store.put(NET_PREFIX + NET, good)
    await store.put(NET_PREFIX + "b" * 64, bad_net)
    await store.put(EP_PREFIX + "x" * 64, b"{not json")
    await store.put(EP_PREFIX + "g" * 64, _record("g" * 64, State.READY, "10.2.0.7", 7))
    class CheckingLinks(FakeLinks):
        async def add_host_address(self, address: str) -> None:
            ipaddress.ip_address(address)  # as netlink's caller does

    links = CheckingLinks()
    links.links["lxc7"] = 7
    mgr = await _manager(store, links=links)
    assert await mgr.restore() == (2, 1)
    await mgr.restore_datapath()
    assert mgr.endpoints["g" * 64].state == State.WAITING_TO_REGENERATE
    assert [f.split(":")[0] for f in mgr.restore_failures] == [NET_PREFIX + "b" * 64, EP_PREFIX + "x" * 64]
    assert "not-an-ip" in mgr.restore_failures[0]


async def test_restore_undoes_interrupted_create_and_delete(store) -> None:
    """Records a crash left ``creating`` or ``disconnecting`` are removed with
    everything they set up; a live endpoint's entries are left alone."""
    await store.put(NET_PREFIX + NET, json.dumps({"id": NET, "ipv6": False, "cilium_ipam": True}).encode())
    await store.put(EP_PREFIX + "c" * 64, _record("c" * 64, State.CREATING, "10.2.0.3", 3))
    await store.put(EP_PREFIX + "d" * 64, _record("d" * 64, State.DISCONNECTING, "10.2.0.4", 4))
    await store.put(EP_PREFIX + "g" * 64, _record("g" * 64, State.READY, "10.2.0.7", 7))
    links = FakeLinks()
    links.links.update({host_ifname("c" * 64): 3, host_ifname("d" * 64): 4, "lxc7": 7})
    dp = RecordingDatapath()
    dp.entries.update({3: (3, "10.2.0.3", None), 4: (4, "10.2.0.4", None)})
    mgr = await _manager(store, links=links, hooks=dp)
    await mgr.restore()
    await mgr.restore_datapath()
    assert list(mgr.endpoints) == ["g" * 64]
    assert set(dp.entries) == {7}
    assert links.links == {"lxc7": 7}
    assert set(await store.get_prefix(EP_PREFIX)) == {EP_PREFIX + "g" * 64}
    assert mgr.restore_failures == []


class FlakyDocker:
    """dockerd's view, unreachable for the first ``down`` calls."""

    def __init__(self, view: DockerView, down: int) -> None:
        self.view, self.down, self.calls = view, down, 0

    async def __call__(self) -> DockerView:
        self.calls += 1
        if self.calls <= self.down:
            raise ConnectionRefusedError("docker.sock: connection refused")
        return self.view


async def test_reconcile_releases_only_what_dockerd_and_we_do_not_know(store) -> None:
    dp = RecordingDatapath()
    mgr = await _manager(store, hooks=dp)
    ipam = mgr.ipam
    await mgr.create_network(NET, V4_DATA, [], {})
    pool = ipam.request_pool(False)
    addr = {}
    for name in ("lost", "docker", "ours", "orphan_ep"):
        addr[name] = str(await ipam.allocate(pool, "docker"))
    await ipam.allocate(pool, "gateway", "10.2.200.1")
    await ipam.allocate(pool, "api", "10.2.200.2")  # POST /v1/ipam: not dockerd's to reclaim
    await mgr.create_endpoint(NET, "o" * 64, addr["ours"] + "/32", "", "")
    await mgr.create_endpoint(NET, "z" * 64, addr["orphan_ep"] + "/32", "", "")
    reconciler = DockerReconciler(mgr, ipam, grace=0)
    later = str(await ipam.allocate(pool, "docker"))  # after the snapshot: this process's own
    view = DockerView(endpoints={"o" * 64}, addresses={addr["docker"], addr["ours"]})
    docker = FlakyDocker(view, down=2)
    t0 = time.monotonic()
    await reconciler.run(docker, max_backoff=0.01)
    assert docker.calls == 3 and time.monotonic() - t0 < 5
    held = set(ipam.allocations())
    assert held == {addr["docker"], addr["ours"], "10.2.200.1", "10.2.200.2", later}
    assert list(mgr.endpoints) == ["o" * 64]  # the endpoint dockerd never got is removed
    assert set(dp.entries) == {mgr.endpoints["o" * 64].id}


async def test_reconcile_waits_for_dockerd_and_releases_nothing_meanwhile(store) -> None:
    mgr = await _manager(store)
    lost = str(await mgr.ipam.allocate(mgr.ipam.request_pool(False), "docker"))
    reconciler = DockerReconciler(mgr, mgr.ipam, grace=0)
    docker = FlakyDocker(DockerView(), down=10**9)
    task = asyncio.create_task(reconciler.run(docker, max_backoff=0.01))
    await asyncio.sleep(0.3)
    assert docker.calls > 3 and not reconciler.done
    assert lost in mgr.ipam.allocations()
    task.cancel()


def test_agent_lock_is_exclusive(tmp_path) -> None:
    first = AgentLock([str(tmp_path), str(tmp_path / ".")])
    first.acquire()  # one directory named twice: one lock, not a deadlock on ourselves
    second = AgentLock([str(tmp_path)])
    try:
        second.acquire()
        raise AssertionError("second lock acquired")
    except AlreadyRunning as exc:
        assert "another cilium-agent (pid" in str(exc) and str(tmp_path) in str(exc)
    first.release()
    second.acquire()
    second.release()


class GatedDatapath(RecordingDatapath):
    """endpoint_created waits for ``release`` (a create under way)."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def endpoint_created(self, ep: Endpoint) -> None:
        self.entered.set()
        await self.release.wait()
        await super().endpoint_created(ep)


async def test_delete_during_the_create_of_the_same_endpoint_is_a_conflict(store) -> None:
    """DeleteEndpoint racing CreateEndpoint of the same Docker endpoint is
    refused (409) and removes nothing under the create; afterwards it works."""
    dp = GatedDatapath()
    mgr = await _manager(store, hooks=dp)
    await mgr.create_network(NET, V4_DATA, [], {})
    docker_id = "e" * 64
    create = asyncio.create_task(mgr.create_endpoint(NET, docker_id, "10.2.0.9/32", "", ""))
    await asyncio.wait_for(dp.entered.wait(), 2.0)
    try:
        await mgr.delete_endpoint(NET, docker_id)
        raise AssertionError("the delete during the create was not refused")
    except Conflict as exc:
        assert exc.status == 409 and "being created" in exc.message
    assert host_ifname(docker_id) in mgr.links.links  # the create's link is still there
    dp.release.set()
    ep, _ = await create
    assert mgr.endpoints[docker_id] is ep and dp.entries[ep.id][1] == "10.2.0.9"
    assert await mgr.delete_endpoint(NET, docker_id) is True
    assert mgr.links.links == {} and docker_id not in mgr.endpoints


async def test_manager_refuses_an_address_no_endpoint_can_hold(store) -> None:
    """The address checks are the manager's own, not only the plugin's: every
    caller of create_endpoint gets them, and nothing is created."""
    mgr = await _manager(store)
    await mgr.create_network(NET, V4_DATA, [], {})
    for address, needle in (("127.0.0.1/32", "not a unicast address"), ("8.8.8.8/32", "outside this node's IPv4"),
                            ("f00d::1/128", "is not an IPv4 address")):
        try:
            await mgr.create_endpoint(NET, "e" * 64, address, "", "")
            raise AssertionError(f"{address} was taken")
        except BadRequest as exc:
            assert needle in exc.message, exc.message
    assert mgr.endpoints == {} and mgr.links.links == {} and await store.get(EP_PREFIX + "e" * 64) is None


async def test_rejected_join_leaves_the_endpoint_as_it_was(api, daemon_plugin) -> None:
    """Found by tests/unit/test_fuzz_properties.py: a Join refused because its
    network is gone (404) had already set the endpoint's sandbox key in memory,
    so the agent showed a sandbox dockerd never attached and the store did not hold."""
    _, daemon = api
    resp = await daemon_plugin.post("/NetworkDriver.DeleteNetwork", data=json.dumps({"NetworkID": NET}))
    assert resp.status == 200, await resp.text()
    docker_id = f"{1001:064d}"
    resp = await daemon_plugin.post("/NetworkDriver.Join", data=json.dumps(
        {"NetworkID": NET, "EndpointID": docker_id, "SandboxKey": "/var/run/docker/netns/x", "Options": {}}))
    assert resp.status == 404 and "not found" in (await resp.json())["Err"]
    assert daemon.endpoints.by_docker_id(docker_id).sandbox_key == ""
    assert json.loads(await daemon.store.get(EP_PREFIX + docker_id))["sandbox_key"] == ""
