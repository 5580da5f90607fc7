"""The HTTP proxy with real sockets on 127.0.0.1: rules enforced, requests
forwarded to a real (aiohttp) upstream, and hostile clients handled."""

from __future__ import annotations

import asyncio
import subprocess
import time

import pytest

from docker_cilium.policy.api.l7 import PortRuleHTTP
from docker_cilium.proxy.http import ProxyLimits
from tests.unit.proxyutil import CLIENT, Client, ProxyFront, get, upstream  # noqa: F401 (fixture)

DEMO = {CLIENT.identity: (PortRuleHTTP(method="GET", path="/public"),)}


async def front(upstream, rules=DEMO, **kw) -> ProxyFront:
    return await ProxyFront(rules, upstream[1], **kw).start()


async def test_demo_rules_on_one_keepalive_connection(upstream):
    """Cilium's Docker demo: GET /public 200, GET /private and POST /public 403."""
    up, _ = upstream
    p = await front(upstream)
    c = await Client.connect(p.port)
    await c.send(get("/public"))
    status, _, body = await c.response()
    assert (status, body) == (200, b"GET /public\n")
    await c.send(get("/private"))
    assert (await c.response())[::2] == (403, b"Access denied\r\n")
    await c.send(get("/public", method="POST", extra="Content-Length: 3\r\n") + b"abc")
    assert (await c.response())[::2] == (403, b"Access denied\r\n")
    await c.send(get("/public"))
    assert (await c.response())[0] == 200
    assert up.seen == [("GET", "/public", 0), ("GET", "/public", 0)]  # denied ones never reached it
    c.close()
    await p.close()


async def test_path_is_matched_with_query_as_envoy_path(upstream):
    p = await front(upstream, {CLIENT.identity: (PortRuleHTTP(method="GET", path="/public"),
                                                 PortRuleHTTP(path="/q\\?a=[0-9]+"))})
    c = await Client.connect(p.port)
    await c.send(get("/public?x=1"))
    assert (await c.response())[0] == 403
    await c.send(get("/q?a=12"))
    assert (await c.response())[0] == 200
    await c.send(get("/publicity"))
    assert (await c.response())[0] == 403  # whole-value match, not a prefix
    c.close()
    await p.close()


async def test_header_and_host_rules(upstream):
    rules = {CLIENT.identity: (PortRuleHTTP(method="PUT", path="/p", headers=("X-My-Header: true",)),
                               PortRuleHTTP(host="api\\.example\\.com(:[0-9]+)?"))}
    p = await front(upstream, rules)
    c = await Client.connect(p.port)
    await c.send(get("/p", method="PUT", extra="x-my-header:  true \r\nContent-Length: 0\r\n"))
    assert (await c.response())[0] == 200
    await c.send(get("/p", method="PUT", extra="X-My-Header: false\r\nContent-Length: 0\r\n"))
    assert (await c.response())[0] == 403
    await c.send(get("/anything", host="api.example.com:8080"))
    assert (await c.response())[0] == 200
    await c.send(get("/anything", host="evil.example.com"))
    assert (await c.response())[0] == 403
    c.close()
    await p.close()


async def test_rules_are_per_peer_with_wildcard_peer(upstream):
    rules = {0: (PortRuleHTTP(path="/any"),), 4242: (PortRuleHTTP(path="/other"),)}
    p = await front(upstream, rules)
    c = await Client.connect(p.port)
    await c.send(get("/any"))
    assert (await c.response())[0] == 200
    await c.send(get("/other"))
    assert (await c.response())[0] == 403  # rules of another identity do not apply
    c.close()
    await p.close()


async def test_chunked_request_and_response(upstream):
    up, _ = upstream
    p = await front(upstream, {CLIENT.identity: (PortRuleHTTP(),)})
    c = await Client.connect(p.port)
    await c.send(get("/echo", method="POST", extra="Transfer-Encoding: chunked\r\n")
                 + b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
    status, headers, body = await c.response()
    assert (status, body, headers["x-len"]) == (200, b"hello world", "11")
    await c.send(get("/chunked"))
    status, headers, body = await c.response()
    assert (status, body) == (200, b"part0;part1;part2;")
    assert headers.get("transfer-encoding") == "chunked"
    c.close()
    await p.close()


async def test_pipelined_requests_answered_in_order(upstream):
    up, _ = upstream
    p = await front(upstream)
    c = await Client.connect(p.port)
    await c.send(get("/public") + get("/private") + get("/public?") + get("/public"))
    got = [(await c.response())[0] for _ in range(4)]
    assert got == [200, 403, 403, 200]
    assert [s[1] for s in up.seen] == ["/public", "/public"]
    c.close()
    await p.close()


async def test_large_body_streamed_with_back_pressure(upstream):
    """The upstream does not read: the proxy must not buffer the client's body."""
    up, _ = upstream
    p = await front(upstream, {CLIENT.identity: (PortRuleHTTP(),)})
    c = await Client.connect(p.port)
    size = 64 << 20
    c.writer.write(get("/hold", method="POST", extra=f"Content-Length: {size}\r\n"))
    chunk = b"x" * (1 << 20)
    sent = 0
    with pytest.raises(asyncio.TimeoutError):
        while sent < size:
            c.writer.write(chunk)
            sent += len(chunk)
            await asyncio.wait_for(c.writer.drain(), 1.0)
    assert sent < 32 << 20, f"{sent} bytes accepted while the upstream read nothing"
    up.hold.set()
    while sent < size:
        c.writer.write(chunk)
        sent += len(chunk)
        await asyncio.wait_for(c.writer.drain(), 10.0)
    status, _, _ = await c.response(timeout=30)
    assert status == 200 and up.seen[-1] == ("POST", "/hold", size)
    c.close()
    await p.close()


@pytest.mark.parametrize("garbage", [
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40,   # a TLS ClientHello
    b"GET /public HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n",
    b"GET /public HTTP/9.9\r\nHost: a\r\n\r\n",
    b"POST /public HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n",
    b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: -5\r\n\r\n",
])
async def test_malformed_requests_get_400_and_close(upstream, garbage):
    up, _ = upstream
    p = await front(upstream, {CLIENT.identity: (PortRuleHTTP(),)})
    c = await Client.connect(p.port)
    await c.send(garbage)
    status, headers, _ = await c.response()
    assert status == 400 and headers["connection"] == "close"
    assert await c.closed()
    assert up.seen == [] and p.sink.rules.get("parse_errors") == 1
    await p.close()


async def test_missing_host_is_400(upstream):
    p = await front(upstream, {CLIENT.identity: (PortRuleHTTP(),)})
    c = await Client.connect(p.port)
    await c.send(b"GET / HTTP/1.1\r\n\r\n")
    assert (await c.response())[0] == 400
    await p.close()


async def test_second_host_header_is_400(upstream):
    """The host rule saw the first Host: a second one the server may act on
    instead is not forwarded (RFC 9112 3.2)."""
    up, _ = upstream
    p = await front(upstream, {CLIENT.identity: (PortRuleHTTP(host="app1"),)})
    c = await Client.connect(p.port)
    await c.send(get("/", host="app1", extra="Host: other\r\n"))
    assert (await c.response())[::2] == (400, b"Bad Request\r\n")   # the proxy's, not a server's
    assert up.seen == [] and p.sink.rules.get("parse_errors") == 1
    await p.close()


async def test_huge_headers_get_431(upstream):
    up, _ = upstream
    p = await front(upstream, {CLIENT.identity: (PortRuleHTTP(),)})
    c = await Client.connect(p.port)
    await c.send(b"GET / HTTP/1.1\r\nHost: a\r\n" + b"".join(b"X-%d: %s\r\n" % (i, b"v" * 1000) for i in range(100)))
    assert (await c.response())[0] == 431
    assert await c.closed()
    c2 = await Client.connect(p.port)  # one header that never ends
    with pytest.raises((ConnectionError, EOFError)):
        for _ in range(100):
            await c2.send(b"GET / HTTP/1.1\r\nHost: a\r\nX-Long: " + b"v" * 65536)
    assert up.seen == []
    await p.close()


async def test_slowloris_head_times_out(upstream):
    p = await front(upstream, {CLIENT.identity: (PortRuleHTTP(),)}, limits=ProxyLimits(header_timeout=0.5))
    c = await Client.connect(p.port)
    t0 = time.monotonic()
    for part in (b"GET / HT", b"TP/1.1\r\n", b"Host: a\r\n"):
        await c.send(part)
        await asyncio.sleep(0.2)
    status, _, _ = await c.response()
    assert status == 408 and time.monotonic() - t0 < 2.0
    assert await c.closed()
    await p.close()


async def test_idle_keepalive_connection_closed(upstream):
    p = await front(upstream, {CLIENT.identity: (PortRuleHTTP(),)}, limits=ProxyLimits(idle_timeout=0.3))
    c = await Client.connect(p.port)
    await c.send(get("/x"))
    assert (await c.response())[0] == 200
    assert await c.closed(timeout=3)
    await p.close()


async def test_client_closing_mid_body_never_completes_the_request(upstream):
    up, _ = upstream
    p = await front(upstream, {CLIENT.identity: (PortRuleHTTP(),)})
    c = await Client.connect(p.port)
    await c.send(get("/echo", method="POST", extra="Content-Length: 100000\r\n") + b"y" * 5000)
    await asyncio.sleep(0.2)
    c.writer.transport.abort()
    for _ in range(50):
        if up.aborted:
            break
        await asyncio.sleep(0.05)
    assert up.aborted == 1 and up.seen == []
    await p.close()


async def test_upstream_connect_failure_is_503(upstream):
    p = await front(upstream, {CLIENT.identity: (PortRuleHTTP(),)})
    p.upstream = ("127.0.0.1", 1)  # nothing listens there
    c = await Client.connect(p.port)
    await c.send(get("/x"))
    status, _, body = await c.response()
    assert status == 503 and body.startswith(b"upstream connect error")
    assert [e["verdict"] for e in p.sink.events] == ["Forwarded", "Error"]
    await p.close()


async def test_upstream_garbage_is_502(unused_tcp_port):
    async def bad(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await r.read(1000)
        w.write(b"NOT HTTP AT ALL\r\n\r\n")
        await w.drain()
    srv = await asyncio.start_server(bad, "127.0.0.1", unused_tcp_port)
    p = await ProxyFront({CLIENT.identity: (PortRuleHTTP(),)}, ("127.0.0.1", unused_tcp_port)).start()
    c = await Client.connect(p.port)
    await c.send(get("/x"))
    assert (await c.response())[0] == 502
    await p.close()
    srv.close()


async def test_upgrade_is_refused(upstream):
    up, _ = upstream
    p = await front(upstream, {CLIENT.identity: (PortRuleHTTP(),)})
    c = await Client.connect(p.port)
    await c.send(get("/ws", extra="Connection: Upgrade\r\nUpgrade: websocket\r\n"))
    assert (await c.response())[::2] == (403, b"Access denied\r\n")
    assert await c.closed()
    assert up.seen == []
    await p.close()


async def test_access_log_and_metrics(upstream):
    p = await front(upstream)
    c = await Client.connect(p.port)
    await c.send(get("/public"))
    await c.response()
    await c.send(get("/private"))
    await c.response()
    kinds = [(e["l7Type"], e["verdict"], e["http"]["method"], e["http"]["url"], e["http"]["code"])
             for e in p.sink.events]
    assert kinds == [("Request", "Forwarded", "GET", "http://app1/public", 0),
                     ("Response", "Forwarded", "GET", "http://app1/public", 200),
                     ("Request", "Denied", "GET", "http://app1/private", 403)]
    ev = p.sink.events[0]
    assert (ev["type"], ev["source"], ev["dstID"], ev["srcLabel"], ev["dstLabel"], ev["observationPoint"]) == \
        ("l7", 11, 22, 1001, 1002, "Ingress")
    assert p.sink.rules == {"received": 2, "forwarded": 1, "denied": 1}
    assert len(p.sink.replies) == 1 and p.sink.replies[0][1] == ""
    c.close()
    await p.close()


async def test_head_response_has_no_body_and_connection_goes_on(upstream):
    up, _ = upstream
    p = await front(upstream, {CLIENT.identity: (PortRuleHTTP(),)})
    c = await Client.connect(p.port)
    await c.send(get("/x", method="HEAD"))
    head = await asyncio.wait_for(c.reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200") and b"Content-Length: 8" in head  # "HEAD /x\n", no body sent
    await c.send(get("/next"))
    status, _, body = await c.response()
    assert (status, body) == (200, b"GET /next\n")
    assert [s[:2] for s in up.seen] == [("HEAD", "/x"), ("GET", "/next")]
    c.close()
    await p.close()


async def test_expect_100_continue_is_relayed(upstream):
    p = await front(upstream, {CLIENT.identity: (PortRuleHTTP(),)})
    c = await Client.connect(p.port)
    await c.send(get("/echo", method="POST", extra="Content-Length: 5\r\nExpect: 100-continue\r\n"))
    interim = await asyncio.wait_for(c.reader.readuntil(b"\r\n\r\n"), 5)
    assert interim.startswith(b"HTTP/1.1 100")
    await c.send(b"hello")
    status, _, body = await c.response()
    assert (status, body) == (200, b"hello")
    c.close()
    await p.close()


async def test_a_client_that_closes_after_connection_close_leaves_no_time_wait_on_the_proxy(upstream):
    """After a "connection: close" answer the proxy waits for the client to
    close first, so the TIME_WAIT is the client's: a TIME_WAIT socket of the
    proxy's would make the kernel drop the next SYN the datapath hands the
    listener for the same tuple (a client reusing its port within 60 s)."""
    p = await front(upstream, {CLIENT.identity: (PortRuleHTTP(),)})
    c = await Client.connect(p.port)
    client_port = c.writer.get_extra_info("sockname")[1]
    await c.send(get("/public", extra="Connection: close\r\n"))
    assert (await c.response())[0] == 200
    c.close()
    await asyncio.sleep(0.3)
    tw = subprocess.run(["ss", "-Htan", "state", "time-wait"], capture_output=True, text=True).stdout
    mine = [line for line in tw.splitlines() if f":{client_port}" in line]
    assert mine and all(line.split()[-2].endswith(f":{client_port}") for line in mine), mine
    await p.close()


async def test_paths_are_normalized_before_rules_and_forwarded_so(upstream):
    """RFC 3986 normalization (as Envoy's normalize_path):
    dot segments and percent-encoded dots cannot walk out of an allowed
    prefix, and the server gets the path the rules judged."""
    up, _ = upstream
    p = await front(upstream, {CLIENT.identity: (PortRuleHTTP(method="GET", path="/public/.*"),)})
    c = await Client.connect(p.port)
    for sneaky in ("/public/../private", "/public/%2e%2e/private", "/public/%2E%2E/%2e%2e/private",
                   "/public/./../private"):
        await c.send(get(sneaky))
        assert (await c.response())[::2] == (403, b"Access denied\r\n"), sneaky
    await c.send(get("/public/./a/../b%7E?q=/../x"))
    assert (await c.response())[0] == 200
    assert up.seen == [("GET", "/public/b~?q=/../x", 0)]
    c.close()
    await p.close()
