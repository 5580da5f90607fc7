"""Conntrack entries from an endpoint's reserved:init phase never let a flow
its real identity's policy denies pass (issue 6, item 1).

The real regenerator, allocator (SQLite), ipcache and policy manager write the
real pinned maps of a loaded datapath; real packets cross real veths.
"""

from __future__ import annotations

import json

import pytest

from docker_cilium.endpoint.model import Endpoint
from docker_cilium.endpoint.regenerator import Regenerator
from docker_cilium.identity import reserved
from docker_cilium.identity.allocator import IdentityAllocator
from docker_cilium.identity.cache import IdentityCache
from docker_cilium.ipcache import IPCache
from docker_cilium.kvstore.sqlite import SQLiteBackend
from docker_cilium.policy.manager import PolicyManager
from tests.privileged.conftest import PYTHON, Container, sh

pytestmark = pytest.mark.privileged

PORT, SPORT = 8080, 40123
OK, TIMEOUT = 0, 2  # nettool / UDP_FROM exit codes: answered, dropped (no answer, no refusal)
UDP_FROM = ("import socket, sys\n"
            "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('', int(sys.argv[3])))\n"
            "s.settimeout(1); s.connect((sys.argv[1], int(sys.argv[2]))); s.send(b'hello')\n"
            "try:\n    d = s.recv(100)\n"
            "except socket.timeout:\n    sys.exit(2)\n"
            "except OSError:\n    sys.exit(3)\n"
            "sys.exit(0 if d == b'ok:hello' else 4)")


def udp_from_port(c: Container, dst: str) -> int:
    """One datagram from the fixed source port SPORT (always the same flow): OK or TIMEOUT."""
    return sh("ip", "netns", "exec", c.netns, PYTHON, "-c", UDP_FROM, dst, str(PORT), str(SPORT),
              check=False).returncode


def endpoint(c: Container, labels: list[str]) -> Endpoint:
    return Endpoint(id=c.lxc_id, docker_endpoint_id=f"{c.lxc_id:064d}", docker_network_id="n" * 64,
                    ifname=c.host_if, ifindex=c.ifindex, peer_ifname="eth0", mac=c.mac, host_mac=c.node_mac,
                    ipv4=c.ipv4, ipv6=c.ipv6, container_id="c" * 64 if labels else "", labels=labels)


@pytest.fixture
async def regen(topo, datapath, tmp_path):
    store = SQLiteBackend(str(tmp_path / "kv.db"))
    await store.connect()
    allocator = IdentityAllocator(store, "priv")
    await allocator.start()
    ipcache = IPCache(store, datapath.maps.ipcache)
    await ipcache.start([topo.router4, topo.router6])
    identities = IdentityCache(allocator, ipcache)
    policy = PolicyManager(store, ipcache, identities, "default")
    await policy.start()
    r = Regenerator(policy, allocator, identities, ipcache, datapath)
    try:
        yield r
    finally:
        await r.close()
        await allocator.close()
        await store.close()


def ct_of(datapath, ip: str) -> list:
    return [e for e in datapath.maps.ct.dump() if ip in (e.saddr, e.daddr)]


async def client_and_server(topo, regen) -> tuple[Container, Endpoint, Container]:
    a, b = topo.add_container("a", 2, 21, reserved.INIT), topo.add_container("b", 3, 22, reserved.INIT)
    await regen.endpoint_created(endpoint(b, ["container:role=backend"]))
    ep_a = endpoint(a, [])
    await regen.endpoint_created(ep_a)
    topo.wait_ready()
    topo.serve(b, PORT)
    return a, ep_a, b


async def become_frontend(regen, ep: Endpoint) -> None:
    """Docker's event brings the labels."""
    ep.container_id, ep.labels = "c" * 64, ["container:role=frontend"]
    await regen.endpoint_changed(ep)
    assert ep.identity >= reserved.MIN_ALLOCATED


async def test_init_endpoint_opens_no_flow(topo, datapath, regen):
    """Fail closed: nothing passes and no conntrack entry is created while init.
    Controls: the host reaches B's server, and A's once A's ingress is not enforced."""
    a, ep_a, b = await client_and_server(topo, regen)
    topo.serve(a, PORT)
    assert ep_a.identity == reserved.INIT
    assert topo.tcp(None, b.ipv4, PORT) == OK       # B serves
    assert udp_from_port(a, b.ipv4) == TIMEOUT
    assert topo.tcp(a, b.ipv4, PORT) == TIMEOUT
    assert topo.tcp(b, a.ipv4, PORT) == TIMEOUT and not topo.ping(b, a.ipv4)  # ingress too
    assert ct_of(datapath, a.ipv4) == []
    await regen.policy.import_rules(json.dumps([{"endpointSelector": {"matchLabels": {"role": "frontend"}},
                                                 "egress": [{}]}]).encode())
    await become_frontend(regen, ep_a)
    assert udp_from_port(a, b.ipv4) == TIMEOUT and topo.tcp(a, b.ipv4, PORT) == TIMEOUT
    # Its ingress is not enforced now: the deny above is its egress policy's.
    assert topo.ping(b, a.ipv4)
    assert topo.tcp(b, a.ipv4, PORT) == OK


async def test_flow_opened_under_init_policy_is_denied_after_identity(topo, datapath, regen):
    """A rule selecting reserved:init lets a flow open; the real identity's
    policy denies it: its conntrack entry must not carry it on."""
    await regen.policy.import_rules(json.dumps([
        {"endpointSelector": {"matchLabels": {"reserved:init": ""}},
         "egress": [{"toEndpoints": [{"matchLabels": {"role": "backend"}}]}]},
        {"endpointSelector": {"matchLabels": {"role": "frontend"}}, "egress": [{}]},
    ]).encode())
    a, ep_a, b = await client_and_server(topo, regen)
    assert udp_from_port(a, b.ipv4) == OK  # allowed by the init rule
    assert topo.tcp(a, b.ipv4, PORT) == OK
    assert ct_of(datapath, a.ipv4) != []
    await become_frontend(regen, ep_a)
    assert udp_from_port(a, b.ipv4) == TIMEOUT  # the very same flow
    assert topo.tcp(a, b.ipv4, PORT) == TIMEOUT
    assert ct_of(datapath, a.ipv4) == []
