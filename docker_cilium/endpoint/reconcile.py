"""Reconcile with dockerd once at start: release what a lost reply left behind.

A kill -9 after the store write and before the reply leaves an address our
IPAM holds (``RequestAddress``) or an endpoint record (``CreateEndpoint``)
that dockerd never learnt of: it will never release or delete them. Once
dockerd answers, every endpoint restored at this start that dockerd does not
know is deleted, and every address dockerd asked for before this start that
it does not know (none of its containers' addresses or network gateways) and
no endpoint of ours holds is released.

Never blindly: nothing happens until dockerd's whole view was read (it may be
down when the agent starts: then this waits, retrying). Only what existed
before this start is a candidate, and only once it is ``grace`` seconds old:
dockerd retries a plugin call for up to 30 s, so a younger address may be the
one an in-flight ``CreateEndpoint`` is about to bring.
"""

from __future__ import annotations

import asyncio
import time
from typing import Awaitable, Callable

import structlog

from docker_cilium.endpoint.manager import EndpointManager
from docker_cilium.ipam.allocator import IPAM, owned_by_docker
from docker_cilium.workloads.docker import DockerView

log = structlog.get_logger(__name__)

DEFAULT_GRACE = 60.0  # > dockerd's 30 s plugin-call retry window


class DockerReconciler:
    """Snapshot the restored state at construction (before the plugin socket
    opens); :meth:`run` applies dockerd's view to that snapshot only."""

    def __init__(self, endpoints: EndpointManager, ipam: IPAM, grace: float = DEFAULT_GRACE) -> None:
        self.endpoints = endpoints
        self.ipam = ipam
        self.grace = grace
        self.done = False
        self._endpoints = {d: ep.created for d, ep in endpoints.endpoints.items()}
        self._addresses = {ip: rec.get("time", 0) for ip, rec in ipam.allocations().items()
                           if owned_by_docker(rec.get("owner", ""))}

    async def run(self, view: Callable[[], Awaitable[DockerView]], max_backoff: float = 10.0) -> None:
        """Wait for the candidates to age and for dockerd, then apply its view."""
        times = list(self._endpoints.values()) + list(self._addresses.values())
        if times:
            await asyncio.sleep(min(max(max(times) + self.grace - time.time(), 0.0), self.grace))
        backoff, last = min(0.5, max_backoff), ""
        while True:
            try:
                current = await view()
                break
            except Exception as exc:  # dockerd down: nothing may be released meanwhile
                if str(exc) != last:
                    log.info("docker.reconcile.waiting", error=str(exc) or type(exc).__name__)
                    last = str(exc)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, max_backoff)
        await self.apply(current)

    async def apply(self, view: DockerView) -> tuple[list[int], list[str]]:
        """Remove the snapshot's endpoints and addresses ``view`` does not know;
        returns (endpoint IDs removed, addresses released)."""
        removed: list[int] = []
        for docker_id, created in self._endpoints.items():
            ep = self.endpoints.endpoints.get(docker_id)
            if docker_id in view.endpoints or ep is None or ep.created != created:
                continue
            try:
                await self.endpoints.delete_endpoint(ep.docker_network_id, docker_id)
                removed.append(ep.id)
            except Exception:
                log.exception("docker.reconcile.delete_failed", endpoint=ep.id)
        released: list[str] = []
        current = self.ipam.allocations()
        for ip, stamp in self._addresses.items():
            rec = current.get(ip)
            if ip in view.addresses or self.endpoints.holds_address(ip) or rec is None or rec.get("time") != stamp:
                continue
            await self.ipam.release(ip)
            released.append(ip)
        self.done = True
        log.info("docker.reconcile", endpoints_removed=removed, addresses_released=released)
        return removed, released
