"""``--prometheus-serve-addr HOST:PORT``: /metrics over HTTP, on the agent's
loop as its own aiohttp site (the API socket is untouched). Off unless given.
"""

from __future__ import annotations

import ipaddress

import structlog
from aiohttp import web

from docker_cilium.metrics.registry import AgentMetrics

log = structlog.get_logger(__name__)


def parse_serve_addr(addr: str) -> tuple[str | None, int]:
    """``HOST:PORT``, ``[V6]:PORT`` or ``:PORT`` (every interface, as Cilium's).
    Raises ValueError with what is wrong."""
    host, sep, port_s = addr.rpartition(":")
    if not sep:
        raise ValueError(f"{addr!r}: expected HOST:PORT (e.g. :9962 or 127.0.0.1:9962)")
    if not port_s.isdigit() or not 0 < int(port_s) < 65536:
        raise ValueError(f"{addr!r}: port must be a number from 1 to 65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{addr!r}: {host!r} is not an IPv6 address") from None
    elif ":" in host:
        raise ValueError(f"{addr!r}: put an IPv6 address in brackets, e.g. [::1]:9962")
    return host or None, int(port_s)


def build_app(metrics: AgentMetrics) -> web.Application:
    async def handle(request: web.Request) -> web.Response:
        try:
            body, content_type = await metrics.exposition(request.headers.get("Accept", ""))
        except Exception as exc:  # a scrape fails, the agent keeps serving; the cause is logged
            log.exception("metrics.scrape_failed")
            return web.Response(status=500, text=f"collecting metrics failed: {exc}\n")
        return web.Response(body=body, headers={"Content-Type": content_type})

    app = web.Application()
    app.router.add_get("/metrics", handle)
    return app


class MetricsServer:
    def __init__(self, metrics: AgentMetrics, addr: str) -> None:
        self.addr = addr
        self.host, self.port = parse_serve_addr(addr)
        self.runner = web.AppRunner(build_app(metrics), access_log=None, handle_signals=False)

    async def start(self) -> None:
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.host, self.port)
        try:
            await site.start()
        except OSError as exc:  # the port is taken, or the address is not this host's
            raise RuntimeError(f"--prometheus-serve-addr {self.addr}: {exc.strerror or exc}") from None
        log.info("server.listening", name="prometheus", address=f"{self.host or '*'}:{self.port}")

    async def stop(self) -> None:
        await self.runner.cleanup()
