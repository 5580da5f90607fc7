"""Container metadata (ID, name, labels) from Docker's event stream.

The plugin protocol never tells us which container an endpoint belongs to,
and plugin handlers must not call the Docker API (dockerd may be waiting on
our reply). So this watcher runs on its own: it follows ``/events`` for
network connects and container starts, inspects the container, finds our
endpoint by its EndpointID and hands the labels to the endpoint manager. On
every (re)connection it also resynchronises all running containers, which
covers events missed while the agent or dockerd was down. Network
``create`` events and every (re)connection also call ``on_networks_changed``:
Docker then may have put rules of its own in front of the agent's
(see ``datapath.iptables``).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

import aiohttp
import structlog

from docker_cilium.identity.labels import from_docker

log = structlog.get_logger(__name__)

Update = Callable[[str, str, str, list[str]], Awaitable[None]]
Notify = Callable[[], Awaitable[None]]


@dataclass
class DockerView:
    """What dockerd holds on this node: the endpoints of its containers and
    every address it gave out (container addresses and network gateways)."""

    endpoints: set[str] = field(default_factory=set)
    addresses: set[str] = field(default_factory=set)

    def add_address(self, value: str | None) -> None:
        if value:
            self.addresses.add(str(ipaddress.ip_interface(value).ip))


def docker_labels(labels: dict[str, str] | None) -> list[str]:
    """Docker labels -> Cilium's ``container:key=value`` strings."""
    return from_docker(labels).to_strings()


class DockerWatcher:
    def __init__(self, socket_path: str, is_ours: Callable[[str], bool], update: Update,
                 on_networks_changed: Notify | None = None) -> None:
        self.socket_path = socket_path
        self.is_ours = is_ours  # network ID -> bool
        self.update = update
        self.on_networks_changed = on_networks_changed
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self.connected = False
        self.last_error = ""
        self._tasks: set[asyncio.Task[None]] = set()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="docker-watcher")

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        if self._session:
            await self._session.close()

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.UnixConnector(path=self.socket_path),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=5),
            )
        return self._session

    async def _get(self, path: str, *, missing_ok: bool = False) -> Any:
        """dockerd's JSON for ``path``; None for a 404 if ``missing_ok`` (a
        container gone meanwhile); any other failure raises."""
        async with self._client().get("http://docker" + path, timeout=aiohttp.ClientTimeout(total=15)) as resp:
            if missing_ok and resp.status == 404:
                return None
            resp.raise_for_status()
            return await resp.json()

    async def view(self) -> DockerView:
        """dockerd's networks and running containers, read completely or not at
        all: any failed call raises, so a partial answer never counts as
        "dockerd does not know this address"."""
        view = DockerView()
        for summary in await self._get("/networks"):
            net = await self._get(f"/networks/{summary['Id']}")
            for cfg in ((net.get("IPAM") or {}).get("Config")) or []:
                view.add_address(cfg.get("Gateway"))
            for attached in (net.get("Containers") or {}).values():
                view.endpoints.add(attached.get("EndpointID", ""))
                view.add_address(attached.get("IPv4Address"))
                view.add_address(attached.get("IPv6Address"))
        for c in await self._get("/containers/json"):
            for attached in (((c.get("NetworkSettings") or {}).get("Networks")) or {}).values():
                view.endpoints.add(attached.get("EndpointID", ""))
                view.add_address(attached.get("IPAddress"))
                view.add_address(attached.get("GlobalIPv6Address"))
        view.endpoints.discard("")
        return view

    async def _run(self) -> None:
        backoff = 0.5
        while True:
            try:
                await self._follow()
                backoff = 0.5
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # dockerd down or restarting: retry
                self.connected = False
                if str(exc) != self.last_error:
                    log.info("docker.watch.retry", error=str(exc) or type(exc).__name__)
                self.last_error = str(exc)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    async def _follow(self) -> None:
        filters = json.dumps({"type": ["network", "container"], "event": ["connect", "start", "create"]})
        async with self._client().get("http://docker/events", params={"filters": filters}) as resp:
            resp.raise_for_status()
            self.connected = True
            self.last_error = ""
            # Subscribe first, then resync: nothing can fall between the two.
            self._spawn(self.resync())
            self._spawn(self._networks_changed())
            buf = b""
            async for chunk in resp.content.iter_any():
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if line.strip():
                        self._spawn(self._on_event(json.loads(line)))
        self.connected = False

    async def _on_event(self, event: dict[str, Any]) -> None:
        try:
            actor = event.get("Actor") or {}
            if event.get("Action") == "create":
                if event.get("Type") == "network":
                    await self._networks_changed()
                return
            if event.get("Type") == "network":
                if not self.is_ours(actor.get("ID", "")):
                    return
                container = (actor.get("Attributes") or {}).get("container", "")
            else:
                container = actor.get("ID", "")
            if container:
                await self.sync_container(container)
        except Exception:
            log.exception("docker.event.failed", event=event.get("Action"))

    async def _networks_changed(self) -> None:
        if self.on_networks_changed is None:
            return
        try:
            await self.on_networks_changed()
        except Exception:
            log.exception("docker.networks_changed.failed")

    async def sync_container(self, container_id: str) -> None:
        info = await self._get(f"/containers/{container_id}/json", missing_ok=True)
        if not info:
            return
        networks = ((info.get("NetworkSettings") or {}).get("Networks")) or {}
        labels = docker_labels((info.get("Config") or {}).get("Labels"))
        for net in networks.values():
            if self.is_ours(net.get("NetworkID", "")) and net.get("EndpointID"):
                await self.update(net["EndpointID"], info["Id"], info.get("Name", "").lstrip("/"), labels)

    async def resync(self) -> None:
        try:
            containers = await self._get("/containers/json")
            for c in containers:
                nets = ((c.get("NetworkSettings") or {}).get("Networks")) or {}
                if any(self.is_ours(n.get("NetworkID", "")) for n in nets.values()):
                    await self.sync_container(c["Id"])
        except Exception:
            log.exception("docker.resync.failed")
