"""One proxied HTTP/1.1 client connection (Cilium puts Envoy here).

Both directions are parsed with httptools (llhttp); heads are rebuilt from
what the parser reported and bodies re-framed (chunked stays chunked, a
Content-Length body is passed as is), so only what parsed is forwarded.

- Requests are handled in order: a request is answered only after the
  previous one's response is complete (pipelining is safe, not parallel).
- Allowed -> forwarded to the original destination over one upstream
  connection per client connection (kept alive while both sides allow),
  from a socket carrying ``mark`` (SO_MARK: the datapath knows the source
  identity and does not redirect it again). Denied -> ``403 Forbidden`` with
  ``Access denied\\r\\n`` (Envoy's answer in Cilium). Malformed -> 400 and
  close. Head over ``max_header_bytes`` -> 431 and close.
- Upgrade requests (``Upgrade:``, ``CONNECT``) are refused with 403 whatever
  the rules say: after a 101 the stream is no longer HTTP and no rule could
  be enforced on it (Envoy without upgrade_configs refuses them too).
- Bodies are streamed: at most one read (64 KiB) is buffered before the
  upstream's drain, so a slow upstream slows the client (back-pressure).
- Timeouts: a request's head must arrive within ``header_timeout`` of its
  first byte (408, slowloris), body bytes within ``body_timeout`` of each
  other, a keep-alive connection may idle ``idle_timeout``; upstream connect
  failure -> 503, no response head within ``upstream_timeout`` -> 504, an
  unparsable or reset upstream response -> 502/503, as Envoy answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import socket
import time
from dataclasses import dataclass
from typing import Callable

import httptools
import structlog

from docker_cilium.proxy.accesslog import DENIED, FORWARDED, AccessLog, Flow
from docker_cilium.proxy.messages import END, Request, RequestSink, ResponseSink, is_chunked
from docker_cilium.proxy.rules import L7Policy
from docker_cilium.proxy.upstreams import EgressUpstreams

log = structlog.get_logger(__name__)

READ_SIZE = 64 * 1024


@dataclass(frozen=True)
class ProxyLimits:
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    idle_timeout: float = 60.0
    connect_timeout: float = 5.0
    upstream_timeout: float = 60.0
    max_header_bytes: int = 60 * 1024   # Envoy's default max_request_headers_kb
    max_connections: int = 10000        # per ProxyManager, all listeners
    #: when the proxy ends a connection (a "connection: close" answer, an
    #: error), how long it waits for the client to close first (Envoy's
    #: delayed_close_timeout): the side that closes first keeps the tuple in
    #: TIME_WAIT, and a TIME_WAIT socket of the proxy's makes the kernel drop
    #: a new SYN the datapath assigns to the listener for the same tuple (a
    #: request socket may not duplicate an established-hash entry), which a
    #: client reusing its ports within 60 s would meet
    delayed_close_timeout: float = 1.0


@dataclass
class ConnectionContext:
    """What one accepted connection needs besides its streams."""

    flow: Flow
    peer_identity: int                 # whose rules apply (ingress: source; egress: destination)
    policy: Callable[[], L7Policy]     # the redirect's current rules (replaced in place)
    upstream: tuple[str, int]          # the original destination
    mark: int                          # SO_MARK of the upstream socket (0: none)
    #: where an egress connection records its upstream's local address
    #: (the ingress proxy's way back to the source; None: ingress)
    upstreams: EgressUpstreams | None = None


def _simple_response(status: int, reason: str, body: bytes, keep_alive: bool) -> bytes:
    head = (f"HTTP/1.1 {status} {reason}\r\ncontent-length: {len(body)}\r\ncontent-type: text/plain\r\n"
            f"date: {email.utils.formatdate(usegmt=True)}\r\n" + ("" if keep_alive else "connection: close\r\n"))
    return head.encode() + b"\r\n" + body


async def _drain(writer: asyncio.StreamWriter, timeout: float) -> None:
    """Wait, at most ``timeout``, for the peer to take what is buffered; at once
    when the kernel took it all (no timer per write on the fast path)."""
    if writer.transport.get_write_buffer_size():
        async with asyncio.timeout(timeout):
            await writer.drain()
    elif writer.transport.is_closing():
        raise ConnectionResetError("connection lost")


class _ClientGone(Exception):
    """The response task closed the client connection."""


class ProxyConnection:
    """Serves one accepted client connection until either side ends it."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, ctx: ConnectionContext,
                 limits: ProxyLimits, access: AccessLog) -> None:
        self.reader, self.writer = reader, writer
        self.ctx, self.limits, self.access = ctx, limits, access
        self.sink = RequestSink()
        self.up_reader: asyncio.StreamReader | None = None
        self.up_writer: asyncio.StreamWriter | None = None
        self._up_local: tuple[int, int] | None = None  # (family, port) in ctx.upstreams
        self.response: asyncio.Task[None] | None = None
        self.current: Request | None = None   # the forwarded request whose body is still coming
        self.discard = False                  # the current request's body is dropped (denied, failed)
        self.closing = False
        self._read_timer: asyncio.Timeout | None = None  # the client read in progress
        self._inline: tuple[Request, asyncio.StreamReader, float] | None = None  # relayed at its END

    # ---- the client side ---------------------------------------------------------

    async def run(self) -> None:
        try:
            await self._serve()
        except (ConnectionError, _ClientGone, asyncio.IncompleteReadError):
            pass
        finally:
            if self.response is not None and not self.response.done():
                self.response.cancel()
            self._close_upstream()
            try:
                await self._delayed_close()
            finally:
                self.writer.transport.abort()

    async def _delayed_close(self) -> None:
        """Flush what the client is owed, then give it
        ``limits.delayed_close_timeout`` to close its side first. A client
        that keeps sending (more than one read's worth, discarded) is cut
        at once instead."""
        transport = self.writer.transport
        if transport.is_closing() or self.reader.at_eof():
            if not transport.is_closing():
                await self._flush_then_close()
            return
        discarded = 0
        try:
            async with asyncio.timeout(self.limits.delayed_close_timeout):
                await self.writer.drain()
                while data := await self.reader.read(READ_SIZE):
                    discarded += len(data)
                    if discarded > READ_SIZE:
                        return  # the caller aborts
        except (TimeoutError, ConnectionError, _ClientGone):
            pass
        await self._flush_then_close()

    async def _flush_then_close(self) -> None:
        """A close that still delivers what is buffered (abort would drop it)."""
        self.writer.close()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(self.limits.delayed_close_timeout):
                await self.writer.wait_closed()

    def close(self) -> None:
        """Abort both sides now (the redirect is gone, the proxy is stopping)."""
        self.closing = True
        self.writer.transport.abort()
        self._close_upstream()

    def _read_deadline(self, response_pending: bool) -> float | None:
        """When the client's next read times out (loop time), None: not while
        waiting on the upstream (its own timeout applies)."""
        lim = self.limits
        if self.sink.in_head:
            return self.sink.head_started + lim.header_timeout
        now = time.monotonic()
        if self.current is not None or self.discard:
            return now + lim.body_timeout
        return None if response_pending else now + lim.idle_timeout

    async def _serve(self) -> None:
        while not self.closing:
            data = await self._read()
            if data is None:
                if self.sink.in_head:
                    await self._await_response()
                    await self._reply(408, "Request Timeout", b"request timeout\r\n", False)
                return
            if not data:
                if self.current is not None and not self.discard:
                    self._abort_upstream()  # a request cut mid-body must not reach the server whole
                    return
                await self._await_response()
                return
            error: Exception | None = None
            try:
                self.sink.parser.feed_data(data)
            except httptools.HttpParserUpgrade:
                pass  # the head event carries upgrade=True: refused below
            except httptools.HttpParserError as exc:
                error = exc
            if self.sink.in_head:
                self.sink.raw_head_bytes += len(data)
            too_large = self.sink.in_head and (self.sink.head_bytes > self.limits.max_header_bytes or
                                               self.sink.raw_head_bytes > self.limits.max_header_bytes + READ_SIZE)
            await self._events()
            if self.closing:
                return
            if too_large or (error is not None and self.sink.head_bytes > self.limits.max_header_bytes):
                await self._await_response()
                self.access.parse_error(self.ctx.flow)
                await self._reply(431, "Request Header Fields Too Large", b"request header too large\r\n", False)
                return
            if error is not None:
                await self._bad_request(error)
                return

    async def _read(self) -> bytes | None:
        """The client's next bytes, or None when its timeout passed. While a
        response is pending no client timeout runs; the response task starts
        the idle one when it is done (:meth:`_response_done`)."""
        pending = self.response is not None and not self.response.done()
        try:
            async with asyncio.timeout_at(self._read_deadline(pending)) as self._read_timer:
                return await self.reader.read(READ_SIZE)
        except TimeoutError:
            return None
        finally:
            self._read_timer = None

    def _response_done(self) -> None:
        if self._read_timer is not None and self._read_timer.when() is None:
            self._read_timer.reschedule(self._read_deadline(False))

    async def _bad_request(self, error: Exception) -> None:
        log.debug("proxy.bad_request", error=str(error), client=self.ctx.flow.source_addr)
        if self.current is not None and not self.discard:
            self._abort_upstream()  # the request being forwarded is cut: the server must not see it end
        await self._await_response()
        self.access.parse_error(self.ctx.flow)
        await self._reply(400, "Bad Request", b"Bad Request\r\n", False)

    async def _events(self) -> None:
        events = self.sink.take()
        for i, ev in enumerate(events):
            if self.closing:
                return
            if isinstance(ev, Request):
                # A request already whole (no body to stream): its response is
                # relayed inline, without a task of its own.
                await self._on_head(ev, whole=i + 1 < len(events) and events[i + 1] is END)
            elif ev is END:
                await self._on_end()
            else:
                await self._on_body(ev)  # type: ignore[arg-type]

    async def _on_head(self, req: Request, whole: bool = False) -> None:
        await self._await_response()
        if self.closing:
            return
        self.access.received()
        flow, info = self.ctx.flow, req.info
        # RFC 9112 3.2: no Host in 1.1, or more than one, is a 400; the rules
        # saw the first Host and the server could act on another.
        if (req.version == "1.1" and not info.host) or len(info.header_values("host")) > 1:
            self.access.parse_error(flow)
            await self._reply(400, "Bad Request", b"Bad Request\r\n", False)
            return
        if req.upgrade or not self.ctx.policy().allows(self.ctx.peer_identity, info):
            self.access.request(flow, info, DENIED, 403, req.version)
            self.discard = True
            await self._reply(403, "Forbidden", b"Access denied\r\n", req.keep_alive and not req.upgrade)
            return
        self.access.request(flow, info, FORWARDED, 0, req.version)
        error = await self._connect()
        if error is not None:
            self.discard = True
            self.access.response(flow, info, 503, req.version, None, error)
            await self._reply(503, "Service Unavailable",
                              b"upstream connect error or disconnect/reset before headers. reset reason: "
                              b"connection failure\r\n", req.keep_alive)
            return
        assert self.up_writer is not None
        self.up_writer.write(req.head())
        self.current = req
        assert self.up_reader is not None
        if whole:
            self._inline = (req, self.up_reader, time.monotonic())
        else:
            self.response = asyncio.create_task(self._relay_response(req, self.up_reader, time.monotonic()))

    async def _on_body(self, data: bytes) -> None:
        if self.discard or self.current is None or self.up_writer is None:
            return
        if self.current.chunked:
            data = b"%x\r\n" % len(data) + data + b"\r\n"
        try:
            self.up_writer.write(data)
            await _drain(self.up_writer, self.limits.upstream_timeout)
        except (ConnectionError, TimeoutError):
            self.discard = True  # the response task reports what the upstream did

    async def _on_end(self) -> None:
        req, self.current = self.current, None
        if self.discard:
            self.discard = False
        elif req is not None and req.chunked and self.up_writer is not None:
            self.up_writer.write(b"0\r\n\r\n")
        if self._inline is not None:
            inline, self._inline = self._inline, None
            await self._relay_response(*inline)
            if self.writer.is_closing():
                raise _ClientGone
        if req is not None and not req.keep_alive:
            await self._await_response()
            self.closing = True

    async def _await_response(self) -> None:
        if self.response is not None:
            task, self.response = self.response, None
            await task
            if self.writer.is_closing():
                raise _ClientGone

    async def _reply(self, status: int, reason: str, body: bytes, keep_alive: bool) -> None:
        self.writer.write(_simple_response(status, reason, body, keep_alive))
        if not keep_alive:
            self.closing = True
        try:
            async with asyncio.timeout(self.limits.body_timeout):
                await self.writer.drain()
        except TimeoutError:
            self.writer.transport.abort()
            raise _ClientGone from None

    # ---- the upstream side -------------------------------------------------------

    async def _connect(self) -> str | None:
        """An open upstream connection, or why there is none."""
        if self.up_writer is not None and not self.up_writer.is_closing() and \
                self.up_reader is not None and not self.up_reader.at_eof():
            return None
        self._close_upstream()
        host, port = self.ctx.upstream
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            if self.ctx.mark:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, self.ctx.mark)
            if self.ctx.upstreams is not None:
                sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", 0))
                self._up_local = (family, sock.getsockname()[1])
                self.ctx.upstreams.add(*self._up_local, self.ctx.flow.source)
            async with asyncio.timeout(self.limits.connect_timeout):
                await asyncio.get_running_loop().sock_connect(sock, (host, port))
            self.up_reader, self.up_writer = await asyncio.open_connection(sock=sock, limit=READ_SIZE)
        except (OSError, TimeoutError) as exc:
            sock.close()
            self._forget_upstream()
            log.debug("proxy.upstream_connect_failed", upstream=f"{host}:{port}", error=repr(exc))
            return "connection failure"
        return None

    def _abort_upstream(self) -> None:
        """Drop the request being forwarded: its response is not waited for."""
        if self.response is not None:
            self.response.cancel()
            self.response = None
        self._close_upstream()

    def _forget_upstream(self) -> None:
        if self._up_local is not None and self.ctx.upstreams is not None:
            self.ctx.upstreams.remove(*self._up_local)
        self._up_local = None

    def _close_upstream(self) -> None:
        self._forget_upstream()
        if self.up_writer is not None:
            self.up_writer.transport.abort()
        self.up_reader = self.up_writer = None

    async def _relay_response(self, req: Request, upstream: asyncio.StreamReader, started: float) -> None:
        """Copy the upstream's answer to ``req`` to the client; on failure answer
        for it (nothing sent yet) or close the client (a partial answer)."""
        try:
            await self._relay(req, upstream, started)
        finally:
            self._response_done()

    async def _relay(self, req: Request, upstream: asyncio.StreamReader, started: float) -> None:
        flow, info = self.ctx.flow, req.info
        code, error, sent = 0, "", False
        try:
            code, sent = await self._copy_response(req, upstream, started)
        except TimeoutError:
            error = "timeout"
        except httptools.HttpParserError:
            error = "protocol error"
        except (ConnectionError, EOFError):
            error = "connection termination"
        if not error:
            return
        self._close_upstream()
        if sent or self.writer.is_closing():
            self.access.response(flow, info, code, req.version, time.monotonic() - started, error)
            self.writer.transport.abort()
            return
        status, reason = {"timeout": (504, "Gateway Timeout"), "protocol error": (502, "Bad Gateway")}.get(
            error, (503, "Service Unavailable"))
        body = (b"upstream request timeout\r\n" if status == 504 else
                b"upstream connect error or disconnect/reset before headers. reset reason: " + error.encode() + b"\r\n")
        self.access.response(flow, info, status, req.version, time.monotonic() - started, error)
        self.discard = self.current is req or self.discard
        self.writer.write(_simple_response(status, reason, body, False))
        self.closing = True
        self.writer.close()

    async def _copy_response(self, req: Request, upstream: asyncio.StreamReader,
                             started: float) -> tuple[int, bool]:
        sink = ResponseSink()
        code, chunked, sent, until_eof, up_keep_alive = 0, False, False, False, True
        head_deadline = started + self.limits.upstream_timeout
        while True:
            timeout = max(0.0, head_deadline - time.monotonic()) if not sent else self.limits.upstream_timeout
            async with asyncio.timeout(timeout):
                data = await upstream.read(READ_SIZE)
            if not data:
                if sent and until_eof:
                    self.access.response(self.ctx.flow, req.info, code, req.version, time.monotonic() - started)
                    self.closing = True
                    self.writer.close()
                    return code, sent
                raise EOFError
            sink.parser.feed_data(data)
            out: list[bytes] = []  # one write per upstream read: one send, not one per piece
            done = False
            for ev in sink.take():
                if isinstance(ev, tuple):
                    code, version, reason, headers, up_keep_alive = ev
                    chunked = is_chunked(headers)
                    out.append(f"HTTP/{version} {code} ".encode() + reason + b"\r\n")
                    out += [n + b": " + v + b"\r\n" for n, v in headers]
                    out.append(b"\r\n")
                    sent = code >= 200
                    until_eof = sent and not chunked and req.method != "HEAD" and code not in (204, 304) and \
                        not any(n.lower() == b"content-length" for n, _ in headers)
                    if sent and req.method == "HEAD":
                        ev = END  # no body follows, whatever the headers say
                if ev is END:
                    if code < 200:
                        continue  # 1xx: the final answer follows
                    if chunked:
                        out.append(b"0\r\n\r\n")
                    done = True
                    break
                if isinstance(ev, bytes):
                    out += [b"%x\r\n" % len(ev), ev, b"\r\n"] if chunked else [ev]
            self.writer.write(b"".join(out))
            await _drain(self.writer, self.limits.body_timeout)
            if done:
                self.access.response(self.ctx.flow, req.info, code, req.version, time.monotonic() - started)
                if not up_keep_alive or req.method == "HEAD":
                    self._close_upstream()
                return code, sent
