"""Cluster health (Cilium's ``cilium-health``): is every node reachable, over the underlay and the tunnel?

Every agent with a cluster store answers ``GET /hello`` on TCP 4240
(Cilium's health port) on all addresses. The prober asks every node in the
registry every 10 s twice, with a 2 s timeout each: at its node address
(the underlay) and at its router address on ``cilium_host`` (its
``IPv4HealthIP``), which is inside its range and so crosses the tunnel
(``--tunnel disabled``: the direct route). A node is reachable when both
answer. The local node is probed like the others (its own responder must
answer) and counted in the total, as Cilium's ``cilium status`` does
(``Cluster health: 3/3 reachable`` on a healthy 3-node cluster).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import aiohttp
import structlog
from aiohttp import web

from docker_cilium.timefmt import rfc3339

from .types import Node

log = structlog.get_logger(__name__)

#: Cilium's health port (``cilium-health`` responder).
HEALTH_PORT = 4240
PROBE_INTERVAL_S = 10.0
PROBE_TIMEOUT_S = 2.0
#: Probes in flight at once: a round over hundreds of nodes (two sockets each) must not
#: take the agent's file descriptors from its other listeners.
MAX_PROBES_IN_FLIGHT = 64
NODE_NAME = web.AppKey("node_name", str)


async def _hello(request: web.Request) -> web.Response:
    return web.Response(text=f"Hello from {request.app[NODE_NAME]}\n")


class HealthResponder:
    """``GET /hello`` on TCP ``port``, all addresses."""

    def __init__(self, node_name: str, port: int = HEALTH_PORT, host: str | None = None) -> None:
        self.node_name = node_name
        self.port = port
        self.host = host  # None: every address, both families
        self._runner: web.AppRunner | None = None
        self.error = ""  # why the port could not be bound (the agent runs on, the other nodes see us unreachable)

    async def start(self) -> None:
        app = web.Application()
        app[NODE_NAME] = self.node_name
        app.router.add_get("/hello", _hello)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        try:
            await web.TCPSite(self._runner, self.host, self.port, reuse_address=True).start()
        except OSError as exc:
            self.error = f"health port {self.port}: {exc.strerror or exc}"
            log.error("health.listen_failed", port=self.port, error=str(exc))
            return
        log.info("health.listening", port=self.port)

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


@dataclass
class PathStatus:
    """One probe's result (Cilium's ConnectivityStatus)."""

    reachable: bool = False
    latency_ms: float = 0.0
    error: str = "not probed yet"

    def model(self) -> dict[str, Any]:
        out: dict[str, Any] = {"reachable": self.reachable, "latency-ms": round(self.latency_ms, 3)}
        if self.error:
            out["status"] = self.error
        return out


@dataclass
class NodeHealth:
    name: str
    ip: str
    tunnel_ip: str
    host: PathStatus = field(default_factory=PathStatus)
    tunnel: PathStatus = field(default_factory=PathStatus)

    @property
    def reachable(self) -> bool:
        return self.host.reachable and self.tunnel.reachable

    def model(self) -> dict[str, Any]:
        return {"name": self.name, "ip": self.ip, "tunnel-ip": self.tunnel_ip,
                "host": self.host.model(), "tunnel": self.tunnel.model()}


class HealthProber:
    """Probes every node of ``nodes()`` each ``interval_s``; ``status()`` is the healthz part."""

    def __init__(self, nodes: Callable[[], list[Node]], *, port: int = HEALTH_PORT,
                 interval_s: float = PROBE_INTERVAL_S, timeout_s: float = PROBE_TIMEOUT_S,
                 max_in_flight: int = MAX_PROBES_IN_FLIGHT) -> None:
        self.nodes = nodes
        self.port = port
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.results: dict[str, NodeHealth] = {}
        self.last_probe = 0.0
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._slots = asyncio.Semaphore(max_in_flight)

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout_s),
                                              connector=aiohttp.TCPConnector(force_close=True, limit=0))
        self._task = asyncio.create_task(self._loop(), name="cluster-health")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._session is not None:
            await self._session.close()

    async def _loop(self) -> None:
        while True:
            try:
                await self.probe_once()
            except Exception:  # a probe round must never end the loop
                log.exception("health.probe_failed")
            await asyncio.sleep(self.interval_s)

    async def probe_once(self) -> None:
        """Probe every node now, both paths at once; nodes that left are forgotten."""
        nodes = self.nodes()
        results = {}
        for node in nodes:
            ip = node.tunnel_endpoint or ""
            old = self.results.get(node.name)
            results[node.name] = (old if old is not None and (old.ip, old.tunnel_ip) == (ip, node.ipv4_health_ip)
                                  else NodeHealth(node.name, ip, node.ipv4_health_ip))
        probes = [(h, which, addr) for h in results.values()
                  for which, addr in (("host", h.ip), ("tunnel", h.tunnel_ip))]
        outcomes = await asyncio.gather(*(self._probe(addr) for _, _, addr in probes))
        for (h, which, _), outcome in zip(probes, outcomes):
            setattr(h, which, outcome)
        self.results = results
        self.last_probe = time.time()

    async def _probe(self, addr: str) -> PathStatus:
        if not addr:
            return PathStatus(False, 0.0, "no address")
        async with self._slots:  # the timeout and the latency count from here
            return await self._probe_now(addr)

    async def _probe_now(self, addr: str) -> PathStatus:
        assert self._session is not None
        host = f"[{addr}]" if ":" in addr else addr
        t0 = time.perf_counter()
        try:
            async with self._session.get(f"http://{host}:{self.port}/hello") as resp:
                await resp.read()
                if resp.status != 200:
                    return PathStatus(False, 0.0, f"HTTP {resp.status}")
        except asyncio.TimeoutError:
            return PathStatus(False, 0.0, f"no answer within {self.timeout_s:g}s")
        except (aiohttp.ClientError, OSError) as exc:
            return PathStatus(False, 0.0, str(exc) or type(exc).__name__)
        return PathStatus(True, (time.perf_counter() - t0) * 1000, "")

    def status(self) -> dict[str, Any]:
        """Cluster health for /v1/healthz: Ok (all reachable), Warning (some), Failure (none of the others)."""
        nodes = sorted(self.results.values(), key=lambda h: h.name)
        total, reachable = len(nodes), sum(h.reachable for h in nodes)
        if not self.last_probe:
            state, msg = "Warning", "no probe yet"
        else:
            down = [h.name for h in nodes if not h.reachable]
            state = "Ok" if not down else "Failure" if reachable <= 1 < total else "Warning"
            msg = f"{reachable}/{total} reachable" + (f", unreachable: {', '.join(down)}" if down else "")
        return {"state": state, "msg": msg, "reachable": reachable, "total": total,
                "last-probe": rfc3339(self.last_probe), "nodes": [h.model() for h in nodes]}
