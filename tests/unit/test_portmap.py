"""Published ports: libnetwork's portmap option parsed, host ports held, mappings
persisted and restored (the kernel rules are a fake here; tests/e2e has the real ones)."""

from __future__ import annotations

import asyncio
import socket
import threading

import pytest

from docker_cilium.datapath.hostport import dnat_rules, static_rules
from docker_cilium.endpoint.model import Endpoint
from docker_cilium.errors import BadRequest, Conflict
from docker_cilium.kvstore import keys
from docker_cilium.portmap.binding import PORTMAP_OPTION, Mapping, PortBinding, parse_portmap
from docker_cilium.portmap import reserve
from docker_cilium.portmap.manager import PortMapManager


def opts(*entries: dict) -> dict:
    return {PORTMAP_OPTION: list(entries), "com.docker.network.endpoint.exposedports": []}


def pb(**kw) -> dict:
    return {"Proto": 6, "IP": "", "Port": 80, "HostIP": "", "HostPort": 0, "HostPortEnd": 0, **kw}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FakeRules:
    def __init__(self) -> None:
        self.installed: list[Mapping] = []
        self.fail_add = False
        self.ensured: dict[str, list[Mapping]] = {}

    async def ensure(self, published):
        self.ensured = published
        self.installed = [m for ms in published.values() for m in ms]

    async def add(self, mappings, ifname):
        if self.fail_add:
            raise RuntimeError("iptables-restore: failed")
        self.installed += mappings

    async def delete(self, mappings, ifname=None):
        self.installed = [m for m in self.installed if m not in mappings]


def endpoint(eid: str = "e" * 64, v6: bool = True) -> Endpoint:
    return Endpoint(id=7, docker_endpoint_id=eid, docker_network_id="n" * 64, ifname="lxc0123456789ab",
                    ifindex=9, peer_ifname="tmp0123456789ab", mac="02:00:00:00:00:07", host_mac="",
                    ipv4="10.2.0.7", ipv6="f00d::a02:0:0:7" if v6 else None)


# ---- parsing ---------------------------------------------------------------------

def test_parse_capture_shape():
    """The body dockerd 20.10 sent for `-p 8080:80` (tests/../dockerd-20.10-capture.jsonl)."""
    got = parse_portmap(opts(pb(HostPort=8080, HostPortEnd=8080)))
    assert got == [PortBinding(6, 80, "", 8080, 8080)]
    assert parse_portmap({PORTMAP_OPTION: []}) == [] and parse_portmap(None) == []
    assert parse_portmap({PORTMAP_OPTION: None}) == []


@pytest.mark.parametrize("entry,message", [
    (pb(Port=0), "Port: 0 is out of range"),
    (pb(Port="80"), "Port: '80' is not an integer"),
    (pb(HostPort=70000), "HostPort: 70000 is out of range"),
    (pb(Proto=132), "SCTP ports cannot be published"),
    (pb(HostIP="nope"), "HostIP: 'nope' is not an IP address"),
    (pb(HostIP="::1"), "::1 cannot be forwarded"),
    (pb(HostPort=9000, HostPortEnd=8000), "HostPortEnd 8000 is below HostPort 9000"),
    (pb(HostPortEnd=8000), "HostPortEnd 8000 without a HostPort"),
    ("80", "expected an object"),
])
def test_parse_rejects_with_the_entry_named(entry, message):
    with pytest.raises(BadRequest) as err:
        parse_portmap(opts(pb(HostPort=1), entry))
    assert f"[{PORTMAP_OPTION!r}][1]" in str(err.value) and message in str(err.value)


def test_families_follow_host_ip_and_container_addresses():
    assert PortBinding(6, 80, "", 1, 1).families(True, True) == [4, 6]
    assert PortBinding(6, 80, "", 1, 1).families(True, False) == [4]
    assert PortBinding(6, 80, "127.0.0.1", 1, 1).families(True, True) == [4]
    with pytest.raises(BadRequest, match="no IPv6 address"):
        PortBinding(6, 80, "fd00::1", 1, 1).families(True, False)


def test_rules_loopback_only_from_host_processes():
    wild = Mapping("tcp", 4, "0.0.0.0", 8080, "10.2.0.7", 80)
    lo = Mapping("udp", 4, "127.0.0.1", 8080, "10.2.0.7", 53)
    v6 = Mapping("tcp", 6, "::", 8080, "f00d::7", 80)
    assert [c for c, _ in dnat_rules(wild)] == ["CILIUM_PRE_nat", "CILIUM_OUTPUT_nat"]
    assert "-d" not in dnat_rules(wild)[0][1].split() and "10.2.0.7:80" in dnat_rules(wild)[0][1]
    assert [c for c, _ in dnat_rules(lo)] == ["CILIUM_OUTPUT_nat"]
    assert "-p udp -d 127.0.0.1 --dport 8080" in dnat_rules(lo)[0][1]
    assert "[f00d::7]:80" in dnat_rules(v6)[0][1]
    assert any("127.0.0.0/8" in line for line in static_rules(4))
    assert not any("127.0.0.0/8" in line for line in static_rules(6))


# ---- the manager -----------------------------------------------------------------

async def test_program_holds_ports_and_persists(store):
    rules = FakeRules()
    mgr = PortMapManager(store, rules)
    port = free_port()
    ep = endpoint()
    got = await mgr.program(ep, opts(pb(HostPort=port, HostPortEnd=port), pb(Proto=17, Port=53, HostPort=port,
                                                                              HostPortEnd=port)))
    assert {(m.proto, m.family, m.host_ip, m.host_port) for m in got} == {
        ("tcp", 4, "0.0.0.0", port), ("tcp", 6, "::", port), ("udp", 4, "0.0.0.0", port), ("udp", 6, "::", port)}
    assert rules.installed == got
    with socket.socket() as s, pytest.raises(OSError):
        s.bind(("0.0.0.0", port))  # held by the agent
    assert await store.get(keys.PORTMAP + ep.docker_endpoint_id) is not None

    await mgr.revoke(ep.docker_endpoint_id)
    assert rules.installed == [] and mgr.mappings(ep.docker_endpoint_id) == []
    assert await store.get(keys.PORTMAP + ep.docker_endpoint_id) is None
    with socket.socket() as s:
        s.bind(("0.0.0.0", port))  # free again


async def test_taken_port_is_a_conflict_and_nothing_stays(store):
    rules = FakeRules()
    mgr = PortMapManager(store, rules)
    ok, taken = free_port(), free_port()
    with socket.socket() as holder:
        holder.bind(("0.0.0.0", taken))
        holder.listen()
        with pytest.raises(Conflict, match=rf"host port {taken}/tcp on 0.0.0.0 and \[::\] is not available .*"
                                           "already in use"):
            await mgr.program(endpoint(), opts(pb(HostPort=ok, HostPortEnd=ok), pb(HostPort=taken,
                                                                                   HostPortEnd=taken)))
    assert rules.installed == [] and await store.get_prefix(keys.PORTMAP) == {}
    with socket.socket() as s:
        s.bind(("0.0.0.0", ok))  # the first binding was released


async def test_rule_failure_releases_everything(store):
    rules = FakeRules()
    rules.fail_add = True
    mgr = PortMapManager(store, rules)
    port = free_port()
    with pytest.raises(RuntimeError):
        await mgr.program(endpoint(), opts(pb(HostPort=port, HostPortEnd=port)))
    assert await store.get_prefix(keys.PORTMAP) == {}
    with socket.socket() as s:
        s.bind(("0.0.0.0", port))


async def test_program_binds_off_the_event_loop(store, monkeypatch):
    gate, opened = threading.Event(), []
    real = reserve.take

    def take(*args):
        opened.append(gate.wait(2))  # True only if the test's loop ran on and opened it meanwhile
        return real(*args)

    monkeypatch.setattr(reserve, "take", take)
    mgr = PortMapManager(store, FakeRules())
    port = free_port()
    task = asyncio.create_task(mgr.program(endpoint(), opts(pb(HostPort=port, HostPortEnd=port))))
    await asyncio.sleep(0.05)  # the loop gets here during the bind only if the bind is in a thread
    gate.set()
    await task
    assert opened == [True], "the bind blocked the event loop"
    mgr.close()


async def test_range_and_ephemeral(store):
    mgr = PortMapManager(store, FakeRules())
    start = free_port()
    with socket.socket() as holder:
        holder.bind(("0.0.0.0", start))
        got = await mgr.program(endpoint(v6=False), opts(pb(HostPort=start, HostPortEnd=start + 5)))
    assert [m.host_port for m in got] != [start] and start < got[0].host_port <= start + 5
    any_port = await mgr.program(endpoint("f" * 64), opts(pb()))
    assert {m.family for m in any_port} == {4, 6} and len({m.host_port for m in any_port}) == 1
    mgr.close()


async def test_restore_rebuilds_live_and_forgets_gone(store):
    rules = FakeRules()
    mgr = PortMapManager(store, rules)
    live, gone = endpoint("a" * 64), endpoint("b" * 64)
    p1, p2 = free_port(), free_port()
    await mgr.program(live, opts(pb(HostPort=p1, HostPortEnd=p1)))
    await mgr.program(gone, opts(pb(HostPort=p2, HostPortEnd=p2)))
    mgr.close()  # the agent stops: ports released, records stay

    rules2 = FakeRules()
    mgr2 = PortMapManager(store, rules2)
    await mgr2.restore({live.docker_endpoint_id: live})
    assert [m.host_port for m in rules2.installed] == [p1, p1]
    assert list(rules2.ensured) == [live.ifname]
    assert list(await store.get_prefix(keys.PORTMAP)) == [keys.PORTMAP + live.docker_endpoint_id]
    with socket.socket() as s, pytest.raises(OSError):
        s.bind(("0.0.0.0", p1))  # held again
    mgr2.close()


# ---- the plugin calls ------------------------------------------------------------

@pytest.fixture
async def ports_plugin(store):
    """The plugin app with a PortMapManager (fake rules) behind it, one endpoint created."""
    import json as _json

    from aiohttp.test_utils import TestClient, TestServer

    from docker_cilium.endpoint.manager import EndpointManager
    from docker_cilium.ipam.allocator import IPAM
    from docker_cilium.plugin.app import build_app
    from docker_cilium.plugin.ipam import IpamDriver
    from docker_cilium.plugin.network import NetworkDriver
    from tests.unit.conftest import NODE
    from tests.unit.fakes import FakeLinks

    rules = FakeRules()
    ports = PortMapManager(store, rules)
    ipam = IPAM(store, NODE)
    mgr = EndpointManager(store, FakeLinks(), None, NODE, ipam, 1400, ports=ports)  # type: ignore[arg-type]
    client = TestClient(TestServer(build_app(NetworkDriver(mgr, ports), IpamDriver(ipam))))
    await client.start_server()

    async def call(method: str, body: dict) -> tuple[int, dict]:
        resp = await client.post(f"/NetworkDriver.{method}", data=_json.dumps(body) + "\n")
        return resp.status, _json.loads(await resp.text())

    gw = f"{NODE.router4}/32"
    assert (await call("CreateNetwork", {"NetworkID": "n" * 64, "Options": {}, "IPv6Data": [],
                                         "IPv4Data": [{"AddressSpace": "CiliumLocal", "Pool": "0.0.0.0/0",
                                                       "Gateway": gw}]}))[0] == 200
    ip = str(NODE.router4 + 5)
    assert (await call("CreateEndpoint", {"NetworkID": "n" * 64, "EndpointID": "e" * 64,
                                          "Interface": {"Address": f"{ip}/32", "AddressIPv6": "",
                                                        "MacAddress": ""}}))[0] == 200
    yield call, rules, ip
    ports.close()
    await client.close()


async def test_plugin_program_oper_info_revoke_delete(ports_plugin, store):
    call, rules, ip = ports_plugin
    port = free_port()
    ids = {"NetworkID": "n" * 64, "EndpointID": "e" * 64}
    status, body = await call("ProgramExternalConnectivity", {**ids, "Options": opts(pb(HostPort=port,
                                                                                         HostPortEnd=port))})
    assert (status, body) == (200, {})
    assert [str(m) for m in rules.installed] == [f"0.0.0.0:{port}/tcp -> {ip}:80"]  # IPv4-only endpoint
    _, info = await call("EndpointOperInfo", ids)
    assert info["Value"][PORTMAP_OPTION] == [{"Proto": 6, "IP": ip, "Port": 80, "HostIP": "0.0.0.0",
                                              "HostPort": port, "HostPortEnd": port}]
    status, body = await call("ProgramExternalConnectivity", {**ids, "Options": opts(pb(Port=0))})
    assert status == 400 and "Port: 0 is out of range" in body["Err"]
    assert [m.host_port for m in rules.installed] == [port]  # a refused request changes nothing

    await call("ProgramExternalConnectivity", {**ids, "Options": opts(pb(HostPort=port, HostPortEnd=port))})
    assert (await call("RevokeExternalConnectivity", ids)) == (200, {})
    assert rules.installed == [] and await store.get_prefix(keys.PORTMAP) == {}
    # Deleting the endpoint unpublishes too (dockerd may never revoke: agent down, reconciliation).
    await call("ProgramExternalConnectivity", {**ids, "Options": opts(pb(HostPort=port, HostPortEnd=port))})
    assert (await call("DeleteEndpoint", ids))[0] == 200
    assert rules.installed == [] and await store.get_prefix(keys.PORTMAP) == {}


async def test_ensure_tolerates_a_gone_link(monkeypatch):
    """Restore after a reboot: an endpoint whose veth is gone must not stop the agent's start."""
    from docker_cilium.datapath import hostport

    calls: list[tuple[str, list[str]]] = []

    async def restore(binary, lines):
        calls.append((binary, lines))

    async def run(binary, *args, check=True):
        return 0

    rules = hostport.HostPortRules(type("Ipt", (), {"ipv6": False, "_run": staticmethod(run)})())  # type: ignore
    monkeypatch.setattr(rules, "_restore", restore)
    m = Mapping("tcp", 4, "0.0.0.0", 8080, "10.2.0.7", 80)
    await rules.ensure({"lxcgone0000000": [m]})
    assert calls and any("--dport 8080" in line for line in calls[0][1])
