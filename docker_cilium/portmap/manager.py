"""Published ports of the node's endpoints: program, revoke, persist, restore.

ProgramExternalConnectivity (after Join, for the container's gateway
endpoint) asks for the ports; the manager holds each host port (a bound
socket, ``reserve.py``), records the mappings in the node store and only then
installs the DNAT rules, so a crash at any point leaves a record that restore
either re-installs (the endpoint lives) or forgets (it is gone). Every step of
a request is undone when a later one fails: a port that is taken fails
``docker run`` with the port in the message and leaves nothing half-mapped.
Mappings go when dockerd revokes them (container stop) or the endpoint is
deleted by any path (DeleteEndpoint, the reconciliation with dockerd,
``cilium endpoint disconnect``).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Protocol

import structlog

from docker_cilium.endpoint.model import Endpoint
from docker_cilium.kvstore import keys
from docker_cilium.kvstore.backend import Backend
from docker_cilium.portmap import reserve
from docker_cilium.portmap.binding import PROTOCOLS, Mapping, PortBinding, parse_portmap

log = structlog.get_logger(__name__)


class PortRules(Protocol):
    """The kernel side (``datapath.hostport.HostPortRules``; a fake in unit tests)."""

    async def ensure(self, published: dict[str, list[Mapping]]) -> None: ...
    async def add(self, mappings: list[Mapping], ifname: str) -> None: ...
    async def delete(self, mappings: list[Mapping], ifname: str | None = None) -> None: ...


@dataclass
class Published:
    """One endpoint's mappings and the sockets that hold their host ports."""

    endpoint_id: int
    ifname: str
    mappings: list[Mapping]
    held: list[reserve.HeldPort] = field(default_factory=list)

    def to_record(self) -> dict:
        return {"endpoint-id": self.endpoint_id, "ifname": self.ifname,
                "mappings": [m.to_record() for m in self.mappings]}


def _mappings(ep: Endpoint, b: PortBinding, held: list[reserve.HeldPort]) -> list[Mapping]:
    proto = PROTOCOLS[b.proto]
    out = []
    for h in held:
        cip = ep.ipv4 if h.family == 4 else ep.ipv6
        assert cip is not None
        out.append(Mapping(proto, h.family, h.host_ip, h.port, cip, b.port))
    return out


class PortMapManager:
    def __init__(self, store: Backend, rules: PortRules) -> None:
        self.store = store
        self.rules = rules
        self._published: dict[str, Published] = {}  # by Docker endpoint ID
        self._lock = asyncio.Lock()
        self.restore_failures: list[str] = []

    def mappings(self, docker_endpoint_id: str) -> list[Mapping]:
        p = self._published.get(docker_endpoint_id)
        return list(p.mappings) if p else []

    async def program(self, ep: Endpoint, options: dict | None) -> list[Mapping]:
        """Publish what ``options`` asks for (BadRequest on a malformed entry,
        Conflict naming a host port that is taken); replaces earlier mappings."""
        bindings = parse_portmap(options)
        async with self._lock:
            await self._revoke_locked(ep.docker_endpoint_id)
            if not bindings:
                return []
            held: list[reserve.HeldPort] = []
            mappings: list[Mapping] = []
            key = keys.PORTMAP + ep.docker_endpoint_id
            try:
                for b in bindings:
                    families = b.families(ep.ipv4 is not None, ep.ipv6 is not None)
                    if not families:
                        continue
                    # Off the event loop: a range (-p 8000-9000:80) is a bind per candidate port.
                    got = await asyncio.to_thread(reserve.take, b, PROTOCOLS[b.proto], families)
                    held += got
                    mappings += _mappings(ep, b, got)
                pub = Published(ep.id, ep.ifname, mappings, held)
                await self.store.put(key, json.dumps(pub.to_record()).encode())
                try:
                    await self.rules.add(mappings, ep.ifname)
                except BaseException:
                    await self.store.delete(key)
                    raise
            except BaseException:
                reserve.release(held)
                raise
            self._published[ep.docker_endpoint_id] = pub
        log.info("portmap.program", endpoint=ep.id, mappings=[str(m) for m in mappings])
        return mappings

    async def revoke(self, docker_endpoint_id: str) -> None:
        """Unpublish (idempotent: dockerd revokes after crashes and restarts too)."""
        async with self._lock:
            await self._revoke_locked(docker_endpoint_id)

    async def _revoke_locked(self, docker_endpoint_id: str) -> None:
        pub = self._published.get(docker_endpoint_id)
        if pub is None:
            return
        # Rules first: a port is never free while packets to it still go to the container.
        await self.rules.delete(pub.mappings, pub.ifname)
        await self.store.delete(keys.PORTMAP + docker_endpoint_id)
        reserve.release(pub.held)
        del self._published[docker_endpoint_id]
        log.info("portmap.revoke", endpoint=pub.endpoint_id, mappings=[str(m) for m in pub.mappings])

    async def endpoint_deleted(self, ep: Endpoint) -> None:
        """EndpointManager's teardown: whatever path deletes an endpoint unpublishes it."""
        await self.revoke(ep.docker_endpoint_id)

    async def restore(self, endpoints: dict[str, Endpoint]) -> None:
        """Re-hold the host ports and rebuild the chains with the mappings of
        ``endpoints`` (by Docker endpoint ID); records of endpoints that are
        gone are dropped. Runs before the plugin socket opens."""
        async with self._lock:
            for key, raw in (await self.store.get_prefix(keys.PORTMAP)).items():
                eid = key[len(keys.PORTMAP):]
                ep = endpoints.get(eid)
                try:
                    rec = json.loads(raw)
                    mappings = [Mapping.from_record(m) for m in rec["mappings"]]
                except Exception as exc:
                    self._failed(key, exc)
                    await self.store.delete(key)
                    continue
                if ep is None:
                    log.info("portmap.restore.endpoint_gone", endpoint_id=eid[:12])
                    await self.store.delete(key)
                    continue
                pub = Published(ep.id, ep.ifname, mappings)
                await asyncio.to_thread(self._rehold, key, pub)  # a bind per mapping, off the event loop
                self._published[eid] = pub
            await self.rules.ensure({p.ifname: p.mappings for p in self._published.values()})
        log.info("portmap.restore", endpoints=len(self._published),
                 mappings=sum(len(p.mappings) for p in self._published.values()))

    def _rehold(self, key: str, pub: Published) -> None:
        """Bind the host port of each of ``pub``'s mappings again (restore)."""
        for m in pub.mappings:
            try:
                pub.held.append(reserve.HeldPort(m.family, m.host_ip, m.host_port,
                                                 reserve.bind(m.proto, m.family, m.host_ip, m.host_port)))
            except OSError as exc:
                # The rule still sends the port to the container (Docker believes it is
                # published); the process that took it meanwhile gets no new connections.
                self._failed(key, OSError(exc.errno, f"host port {m.host_ip}:{m.host_port}/{m.proto} "
                                                     f"was taken while the agent was down: {exc.strerror}"))

    def _failed(self, key: str, exc: Exception) -> None:
        log.error("portmap.restore.failed", key=key, error=str(exc))
        self.restore_failures.append(f"{key}: {exc}")

    def close(self) -> None:
        """Release the held ports (agent stop; the rules stay and keep forwarding)."""
        for pub in self._published.values():
            reserve.release(pub.held)
            pub.held.clear()
