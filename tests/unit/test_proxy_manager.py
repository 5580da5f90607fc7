"""ProxyManager: ports from the range, listeners per redirect, rules replaced
in place, listeners and connections closed when a redirect goes; the access
log's line, the metrics and the status line."""

from __future__ import annotations

import asyncio
import socket

import pytest

from docker_cilium.ipcache import IPCache
from docker_cilium.cli.status import proxy_line
from docker_cilium.errors import AllocationFailed
from docker_cilium.metrics import AgentMetrics
from docker_cilium.monitor.format import info
from docker_cilium.policy.api.l7 import PortRuleHTTP
from docker_cilium.proxy.accesslog import AccessLog
from docker_cilium.proxy.manager import ProxyManager
from docker_cilium.proxy.peers import AgentPeers, Peer
from docker_cilium.proxy.redirect import EndpointAddr, RedirectKey
from docker_cilium.identity import reserved
from tests.unit.proxyutil import CLIENT, Client, Events, get, upstream  # noqa: F401 (fixture)

EP = EndpointAddr(7, 1002, "10.15.0.7", "f00d::7")
KEY80 = RedirectKey(7, "ingress", 80, 6)
KEY8080 = RedirectKey(7, "egress", 8080, 6)


class Peers:
    def peer(self, ip: str) -> Peer:
        return CLIENT


@pytest.fixture
def mgr():
    sink = Events()
    base = 21000 + (id(sink) >> 4) % 2000 * 10
    m = ProxyManager(Peers(), AccessLog(sink, sink), port_min=base, port_max=base + 9, transparent=False,
                     bind4="127.0.0.1", bind6="::1")
    m.sink = sink  # type: ignore[attr-defined]
    return m


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


async def test_ports_allocated_kept_and_released(mgr):
    ports = await mgr.update_endpoint(EP, {KEY80: {0: ()}, KEY8080: {0: ()}})
    assert set(ports) == {KEY80, KEY8080}
    assert all(mgr.port_min <= p <= mgr.port_max for p in ports.values()) and len(set(ports.values())) == 2
    assert all(listening(p) for p in ports.values())
    again = await mgr.update_endpoint(EP, {KEY80: {CLIENT.identity: (PortRuleHTTP(path="/x"),)}})
    assert again == {KEY80: ports[KEY80]}          # a redirect that stays keeps its port
    assert not listening(ports[KEY8080])           # the one that went is closed
    assert mgr.sink.redirects == 1
    st = mgr.status("10.15.0.1")
    assert proxy_line(st) == f"OK, ip 10.15.0.1, 1 redirects active on ports {mgr.port_min}-{mgr.port_max}"
    await mgr.remove_endpoint(7)
    assert not listening(ports[KEY80]) and mgr.redirects == {} and mgr.sink.redirects == 0
    await mgr.close()


async def test_port_taken_by_another_process_is_skipped(mgr):
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", mgr.port_min))
        s.listen()
        ports = await mgr.update_endpoint(EP, {KEY80: {0: ()}})
    assert ports[KEY80] == mgr.port_min + 1
    await mgr.close()


async def test_no_free_port_fails_whole_update(mgr):
    mgr.port_max = mgr.port_min  # one port for two redirects
    with pytest.raises(AllocationFailed, match="no free proxy port"):
        await mgr.update_endpoint(EP, {KEY80: {0: ()}, KEY8080: {0: ()}})
    assert mgr.redirects == {} and not listening(mgr.port_min)


async def test_transparent_listener(mgr):
    """Root: the listeners are IP_TRANSPARENT / IPV6_TRANSPARENT sockets."""
    mgr.transparent = True
    port = (await mgr.update_endpoint(EP, {KEY80: {0: ()}}))[KEY80]
    socks = [s for srv in mgr.redirects[KEY80].servers for s in srv.sockets]
    assert {s.family for s in socks} == {socket.AF_INET, socket.AF_INET6}
    v4 = next(s for s in socks if s.family == socket.AF_INET)
    v6 = next(s for s in socks if s.family == socket.AF_INET6)
    assert v4.getsockopt(socket.SOL_IP, 19) == 1 and v6.getsockopt(socket.IPPROTO_IPV6, 75) == 1
    assert v6.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
    assert v4.getsockname()[1] == port
    await mgr.close()


async def test_direct_connection_to_proxy_port_is_dropped(mgr):
    """A connection that was not redirected would be forwarded to the proxy itself."""
    port = (await mgr.update_endpoint(EP, {KEY80: {0: (PortRuleHTTP(),)}}))[KEY80]
    c = await Client.connect(port)
    await c.send(get("/"))
    assert await c.closed()
    await mgr.close()


async def front_for(mgr: ProxyManager, key: RedirectKey, up_port: int) -> asyncio.Server:
    """Connections 'redirected' to ``key`` with the original destination 127.0.0.1:up_port."""
    red = mgr.redirects[key]
    return await asyncio.start_server(
        lambda r, w: mgr.serve(red, r, w, ("127.0.0.1", up_port), w.get_extra_info("peername")), "127.0.0.1", 0)


async def test_rules_replaced_in_place_and_connections_closed_with_redirect(mgr, upstream):
    _, (_, up_port) = upstream
    await mgr.update_endpoint(EP, {KEY80: {CLIENT.identity: (PortRuleHTTP(path="/a"),)}})
    srv = await front_for(mgr, KEY80, up_port)
    c = await Client.connect(srv.sockets[0].getsockname()[1])
    await c.send(get("/a"))
    assert (await c.response())[0] == 200
    await c.send(get("/b"))
    assert (await c.response())[0] == 403
    await mgr.update_endpoint(EP, {KEY80: {CLIENT.identity: (PortRuleHTTP(path="/b"),)}})
    await c.send(get("/b"))   # same connection: the new rules apply to its next request
    assert (await c.response())[0] == 200
    await c.send(get("/a"))
    assert (await c.response())[0] == 403
    assert mgr.connections == 1
    await mgr.update_endpoint(EP, {})
    assert await c.closed()
    await asyncio.sleep(0.05)
    assert mgr.connections == 0
    srv.close()
    await mgr.close()


async def test_connection_limit(mgr, upstream):
    _, (_, up_port) = upstream
    await mgr.update_endpoint(EP, {KEY80: {0: (PortRuleHTTP(),)}})
    red = mgr.redirects[KEY80]
    mgr.limits = type(mgr.limits)(max_connections=1)
    srv = await asyncio.start_server(
        lambda r, w: mgr._accept(red, r, w), "127.0.0.1", 0)  # local port != proxy port: taken as redirected
    port = srv.sockets[0].getsockname()[1]
    c1 = await Client.connect(port)
    await asyncio.sleep(0.05)
    c2 = await Client.connect(port)
    assert await c2.closed()
    c1.close()
    srv.close()
    await mgr.close()


async def test_upstream_socket_carries_the_identity_mark(mgr):
    """Ingress: PROXY_INGRESS | the client's identity; egress: PROXY_EGRESS | the endpoint's."""
    from docker_cilium.datapath.marks import MARK_MAGIC_PROXY_EGRESS, MARK_MAGIC_PROXY_INGRESS, mark_identity
    marks: list[int] = []
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen()
    up_port = lsock.getsockname()[1]
    await mgr.update_endpoint(EP, {KEY80: {0: (PortRuleHTTP(),)}, KEY8080: {0: (PortRuleHTTP(),)}})
    for key in (KEY80, KEY8080):
        srv = await front_for(mgr, key, up_port)
        c = await Client.connect(srv.sockets[0].getsockname()[1])
        await c.send(get("/"))
        await asyncio.sleep(0.1)
        conn = next(iter(mgr.redirects[key].connections))
        assert conn.up_writer is not None
        marks.append(conn.up_writer.get_extra_info("socket").getsockopt(socket.SOL_SOCKET, socket.SO_MARK))
        c.close()
        srv.close()
    assert marks[0] & 0xF00 == MARK_MAGIC_PROXY_INGRESS and mark_identity(marks[0]) == CLIENT.identity
    assert marks[1] & 0xF00 == MARK_MAGIC_PROXY_EGRESS and mark_identity(marks[1]) == EP.identity
    lsock.close()
    await mgr.close()


def test_access_log_line_is_ciliums():
    sink = Events()
    from docker_cilium.proxy.accesslog import Flow
    from docker_cilium.proxy.rules import RequestInfo
    flow = Flow("ingress", Peer(1001, 11, ("container:id=app2",)), Peer(1002, 22, ("container:id=app1",)),
                "10.15.0.11:4000", "10.15.0.22:80")
    log = AccessLog(sink, sink)
    req = RequestInfo("GET", "/private", "app1", ())
    log.request(flow, req, "Denied", 403, "1.1")
    log.response(flow, RequestInfo("GET", "/public", "app1", ()), 200, "1.1", 0.01)
    assert info(sink.events[0]) == ("<- Request http from 11 ([container:id=app2]) to 22 ([container:id=app1]), "
                                    "identity 1001->1002, verdict Denied GET http://app1/private => 403")
    assert info(sink.events[1]) == ("-> Response http to 11 ([container:id=app2]) from 22 ([container:id=app1]), "
                                    "identity 1001->1002, verdict Forwarded GET http://app1/public => 200")
    # `cilium monitor --type l7 --to 22` streams them; --from 99 does not
    from docker_cilium.monitor.events import TYPES_BY_NAME
    from docker_cilium.monitor.hub import Filter
    assert "l7" in TYPES_BY_NAME
    assert Filter(frozenset({"l7"}), to=frozenset({22})).match(sink.events[0])
    assert not Filter(frozenset({"l7"}), from_=frozenset({99})).match(sink.events[0])
    assert not Filter(frozenset({"drop"})).match(sink.events[0])


def test_metrics_under_ciliums_names():
    m = AgentMetrics()
    log = AccessLog(None, m)
    log.received()
    from docker_cilium.proxy.accesslog import Flow
    from docker_cilium.proxy.rules import RequestInfo
    flow = Flow("egress", Peer(1), Peer(2), "a", "b")
    log.request(flow, RequestInfo("GET", "/", "h", ()), "Denied", 403, "1.1")
    log.response(flow, RequestInfo("GET", "/", "h", ()), 200, "1.1", 0.2)
    m.proxy_redirects(3)
    r = m.registry
    assert r.get_sample_value("cilium_policy_l7_total", {"rule": "received"}) == 1
    assert r.get_sample_value("cilium_policy_l7_total", {"rule": "denied"}) == 1
    assert r.get_sample_value("cilium_proxy_redirects", {"protocol_l7": "http"}) == 3
    assert r.get_sample_value("cilium_proxy_upstream_reply_seconds_count",
                              {"error": "", "protocol_l7": "http", "scope": "total"}) == 1


def test_agent_peers_lookup():
    class Ep:
        def __init__(self, id, identity, ipv4, ipv6):
            self.id, self.identity, self.ipv4, self.ipv6 = id, identity, ipv4, ipv6
    peers = AgentPeers(lambda: [Ep(5, 3000, "10.15.0.5", "f00d::5")], lambda: {"192.0.2.1"},
                       lambda: {"198.51.100.0/24": reserved.LOCAL_SCOPE | 1, "198.51.0.0/16": reserved.LOCAL_SCOPE | 2},
                       lambda n: ["x"] if n == 3000 else None)
    assert peers.peer("10.15.0.5") == Peer(3000, 5, ("x",))
    assert peers.peer("::ffff:10.15.0.5") == Peer(3000, 5, ("x",))
    assert peers.peer("f00d::5").endpoint_id == 5
    assert peers.peer("192.0.2.1").identity == reserved.HOST
    assert peers.peer("198.51.100.9").identity == reserved.LOCAL_SCOPE | 1
    assert peers.peer("198.51.7.9").identity == reserved.LOCAL_SCOPE | 2
    assert peers.peer("8.8.8.8").identity == reserved.WORLD


async def test_agent_peers_know_other_nodes_endpoints_from_the_shared_ipcache(store):
    """An endpoint on another node is judged by its identity, not as world,
    with the real IPCache's remote entries behind the lookup."""
    ipc = IPCache(store, None)
    peers = AgentPeers(lambda: [], lambda: set(), lambda: {}, lambda n: None, ipc.remote_identity)
    assert peers.peer("10.12.0.7").identity == reserved.WORLD
    ipc.upsert_remote("10.12.0.7", 4242, "192.0.2.12")
    assert peers.peer("10.12.0.7").identity == 4242
    assert peers.peer("::ffff:10.12.0.7").identity == 4242
    ipc.delete_remote("10.12.0.7")
    assert peers.peer("10.12.0.7").identity == reserved.WORLD


class HostPeers:
    """Every address is the host's (the egress proxy's hairpinned upstream)."""

    def peer(self, ip: str) -> Peer:
        return Peer(reserved.HOST)


@pytest.mark.parametrize("client_is_host, status", [(False, 403), (True, 200)])
async def test_egress_upstream_source_only_for_host_clients(mgr, upstream, client_is_host, status):
    """The egress upstreams are keyed by local port alone: a client that is not
    the host and uses the same source port keeps its own identity (403), while
    the hairpinned connection from the host gets the endpoint behind it (200)."""
    _, (_, up_port) = upstream
    trusted = Peer(4242)
    if client_is_host:
        mgr.peers = HostPeers()
    await mgr.update_endpoint(EP, {KEY80: {trusted.identity: (PortRuleHTTP(path="/private"),)}})
    srv = await front_for(mgr, KEY80, up_port)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    mgr.upstreams.add(socket.AF_INET, sock.getsockname()[1], trusted)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", srv.sockets[0].getsockname()[1]))
    c = Client(*await asyncio.open_connection(sock=sock))
    await c.send(get("/private"))
    assert (await c.response())[0] == status
    c.close()
    srv.close()
    await mgr.close()
