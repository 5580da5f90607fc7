"""Helpers for the proxy's unit tests: a real upstream HTTP server (aiohttp),
the proxy in front of it on 127.0.0.1 with a fixed "original destination"
(no TPROXY needed), and a raw client that parses responses with httptools."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import httptools
import pytest
from aiohttp import web

from docker_cilium.policy.api.l7 import PortRuleHTTP
from docker_cilium.proxy.accesslog import AccessLog, Flow
from docker_cilium.proxy.http import ConnectionContext, ProxyConnection, ProxyLimits
from docker_cilium.proxy.peers import Peer
from docker_cilium.proxy.rules import L7Policy

CLIENT = Peer(1001, 11, ("container:app=app2",))
SERVER = Peer(1002, 22, ("container:app=app1",))


class Events:
    """An EventSink and ProxyMetrics that remember everything."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.rules: dict[str, int] = {}
        self.replies: list[tuple[float, str]] = []
        self.redirects = -1

    def publish(self, event: dict[str, Any]) -> None:
        self.events.append(event)

    def l7_request(self, rule: str) -> None:
        self.rules[rule] = self.rules.get(rule, 0) + 1

    def proxy_upstream_reply(self, seconds: float, error: str) -> None:
        self.replies.append((seconds, error))

    def proxy_redirects(self, count: int) -> None:
        self.redirects = count


@dataclass
class Upstream:
    """What the upstream server saw."""

    seen: list[tuple[str, str, int]] = field(default_factory=list)   # method, path_qs, body length
    aborted: int = 0
    hold: asyncio.Event = field(default_factory=asyncio.Event)


def upstream_app(up: Upstream) -> web.Application:
    async def any_(request: web.Request) -> web.StreamResponse:
        path = request.path
        if path == "/hold":
            await up.hold.wait()  # does not read the body until released
        try:
            body = await request.read()
        except Exception:
            up.aborted += 1
            raise
        up.seen.append((request.method, request.path_qs, len(body)))
        if path == "/chunked":
            resp = web.StreamResponse()
            resp.enable_chunked_encoding()
            await resp.prepare(request)
            for i in range(3):
                await resp.write(f"part{i};".encode())
            await resp.write_eof()
            return resp
        if path == "/echo":
            return web.Response(body=body, headers={"X-Len": str(len(body))})
        return web.Response(text=f"{request.method} {request.path_qs}\n")

    app = web.Application(client_max_size=1 << 30)
    app.router.add_route("*", "/{tail:.*}", any_)
    return app


@pytest.fixture
async def upstream():
    """(Upstream record, ("127.0.0.1", port)) of a real aiohttp server."""
    up = Upstream()
    runner = web.AppRunner(upstream_app(up))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield up, ("127.0.0.1", port)
    up.hold.set()
    await runner.cleanup()


class ProxyFront:
    """The proxy listening on 127.0.0.1:port, every connection 'redirected' to ``upstream``."""

    def __init__(self, rules: dict[int, tuple[PortRuleHTTP, ...]], upstream: tuple[str, int],
                 limits: ProxyLimits | None = None, peer: int = CLIENT.identity) -> None:
        self.policy = L7Policy(rules)
        self.upstream = upstream
        self.limits = limits or ProxyLimits()
        self.peer = peer
        self.sink = Events()
        self.access = AccessLog(self.sink, self.sink)
        self.conns: list[ProxyConnection] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> "ProxyFront":
        self.server = await asyncio.start_server(self._cb, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _cb(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        flow = Flow("ingress", CLIENT, SERVER, "10.0.0.11:40000", f"10.0.0.22:{self.upstream[1]}")
        ctx = ConnectionContext(flow, self.peer, lambda: self.policy, self.upstream, 0)
        conn = ProxyConnection(reader, writer, ctx, self.limits, self.access)
        self.conns.append(conn)
        await conn.run()

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        for c in self.conns:
            c.close()


class Client:
    """A raw HTTP/1.1 client: bytes out, responses parsed by httptools."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.done: list[tuple[int, dict[str, str], bytes]] = []
        self._status = 0
        self._headers: dict[str, str] = {}
        self._body = bytearray()
        self.parser = httptools.HttpResponseParser(self)

    @classmethod
    async def connect(cls, port: int) -> "Client":
        r, w = await asyncio.open_connection("127.0.0.1", port)
        return cls(r, w)

    def on_message_begin(self) -> None:
        self._headers, self._body = {}, bytearray()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode().lower()] = value.decode()

    def on_headers_complete(self) -> None:
        self._status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self._body += body

    def on_message_complete(self) -> None:
        self.done.append((self._status, self._headers, bytes(self._body)))

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def response(self, timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
        while not self.done:
            data = await asyncio.wait_for(self.reader.read(65536), timeout)
            if not data:
                raise EOFError("connection closed before a whole response")
            self.parser.feed_data(data)
        return self.done.pop(0)

    async def closed(self, timeout: float = 5.0) -> bool:
        """True once the proxy closed the connection (EOF or reset)."""
        try:
            while True:
                data = await asyncio.wait_for(self.reader.read(65536), timeout)
                if not data:
                    return True
        except ConnectionError:
            return True

    def close(self) -> None:
        self.writer.close()


def get(path: str, host: str = "app1", extra: str = "", method: str = "GET") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode()
