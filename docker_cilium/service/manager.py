"""The services of this node: IDs, backend IDs, node-store records and LB maps.

Each service is a node-store record (``keys.SERVICES``/<id>) and entries in
the LB maps (``datapath.maps.lbmap.LBMap``). A change is written to the store
first and then to the maps (the store rolled back if the maps refuse it), so
the store always holds what the maps hold or the last request a restart will
apply; :meth:`ServiceManager.restore` writes every record into the maps before
the agent opens its sockets and drops frontends no record names.

Backend IDs are shared by every service with the same backend address (as
Cilium's) and kept in the record, so a restarted agent gives connections'
CT_SERVICE entries the same backends. A backend no service uses any more
stays in the backends map while CT_SERVICE entries name it (established
connections keep it: bpf_src/lib/lb_lxc.h); :meth:`collect_backends`, run
with conntrack GC, deletes it once none does.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import structlog

from docker_cilium.datapath.maps.lbmap import LBMap, L4Addr
from docker_cilium.errors import Conflict
from docker_cilium.kvstore import keys
from docker_cilium.kvstore.backend import Backend
from docker_cilium.service.model import Service, format_addr

log = structlog.get_logger(__name__)

MAX_BACKEND_ID = 0xFFFFFFFF


def _record(svc: Service, ids: dict[L4Addr, int]) -> bytes:
    return json.dumps({"id": svc.id, "frontend": vars(svc.frontend),
                       "backends": [{**vars(b), "backend-id": ids[b]} for b in svc.backends]}).encode()


def _from_record(raw: bytes) -> tuple[Service, dict[L4Addr, int]]:
    doc: dict[str, Any] = json.loads(raw)
    backends = [(L4Addr(b["ip"], b["port"], b["protocol"]), int(b["backend-id"])) for b in doc["backends"]]
    svc = Service(int(doc["id"]), L4Addr(**doc["frontend"]), tuple(a for a, _ in backends))
    return svc, dict(backends)


class ServiceManager:
    """`cilium service`: the services, their maps and their records. ``lb`` None: no datapath (unit tests)."""

    def __init__(self, store: Backend, lb: LBMap | None) -> None:
        self._store = store
        self._lb = lb
        self._services: dict[int, Service] = {}
        self._backend_ids: dict[L4Addr, int] = {}      # backends some service uses
        self._draining: dict[int, L4Addr] = {}         # in the backends map for connections only
        self._lock = asyncio.Lock()

    # -- reads ----------------------------------------------------------------------------
    def services(self) -> list[Service]:
        return [self._services[i] for i in sorted(self._services)]

    def get(self, svc_id: int) -> Service | None:
        return self._services.get(svc_id)

    def backend_id(self, addr: L4Addr) -> int | None:
        return self._backend_ids.get(addr)

    def draining(self) -> dict[int, L4Addr]:
        return dict(self._draining)

    # -- start ----------------------------------------------------------------------------
    async def restore(self) -> int:
        """Every stored service into the maps; frontends no record names out of them.
        Backends in the map that no service uses are draining. Returns how many services."""
        records = await self._store.get_prefix(keys.SERVICES)
        for key, raw in records.items():
            try:
                svc, ids = _from_record(raw)
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("service.restore.skipped", key=key, error=str(exc))
                continue
            self._services[svc.id] = svc
            self._backend_ids.update(ids)
        if self._lb is not None:
            wanted = {(s.id, s.frontend) for s in self._services.values()}
            for old in self._lb.dump():
                if (old.id, old.frontend) not in wanted:
                    self._lb.delete_service(old.id, old.frontend)
            for svc in self._services.values():
                self._write(svc)
            used = set(self._backend_ids.values())
            self._draining = {i: a for i, a in self._lb.backends().items() if i not in used}
        log.info("service.restored", services=len(self._services), draining_backends=len(self._draining))
        return len(self._services)

    # -- changes --------------------------------------------------------------------------
    async def upsert(self, svc: Service) -> bool:
        """Create or replace service ``svc.id``; True if it was created.
        Conflict if another service has the frontend."""
        async with self._lock:
            for other in self._services.values():
                if other.id != svc.id and other.frontend == svc.frontend:
                    raise Conflict(f"frontend {format_addr(svc.frontend)}/{svc.frontend.protocol} "
                                   f"is service {other.id}'s")
            old = self._services.get(svc.id)
            ids: dict[L4Addr, int] = {}
            for b in svc.backends:
                ids[b] = self._allocate(b, set(ids.values()))
            old_raw = await self._store.get(keys.SERVICES + str(svc.id))
            await self._store.put(keys.SERVICES + str(svc.id), _record(svc, ids))
            try:
                if old is not None and old.frontend != svc.frontend and self._lb is not None:
                    await asyncio.to_thread(self._lb.delete_service, old.id, old.frontend)
                self._services[svc.id] = svc
                self._backend_ids.update(ids)
                for backend_id in ids.values():
                    self._draining.pop(backend_id, None)
                await asyncio.to_thread(self._write, svc)
            except Exception:
                await self._rollback(svc, old, old_raw)
                raise
            self._release_unused()
            log.info("service.upserted", id=svc.id, frontend=format_addr(svc.frontend),
                     protocol=svc.frontend.protocol, backends=[format_addr(b) for b in svc.backends])
            return old is None

    async def delete(self, svc_id: int) -> bool:
        """Remove service ``svc_id``; False if there is none."""
        async with self._lock:
            svc = self._services.get(svc_id)
            if svc is None:
                return False
            await self._store.delete(keys.SERVICES + str(svc_id))
            del self._services[svc_id]
            if self._lb is not None:
                await asyncio.to_thread(self._lb.delete_service, svc_id, svc.frontend)
            self._release_unused()
            log.info("service.deleted", id=svc_id, frontend=format_addr(svc.frontend))
            return True

    def collect_backends(self, in_use: set[int]) -> int:
        """Delete draining backends no live CT_SERVICE entry names (``in_use``); returns how many."""
        gone = [i for i in self._draining if i not in in_use]
        for backend_id in gone:
            addr = self._draining.pop(backend_id)
            if self._lb is not None:
                self._lb.delete_backend(backend_id, addr.family)
        if gone:
            log.info("service.backends.collected", backend_ids=gone)
        return len(gone)

    # -- internals ------------------------------------------------------------------------
    def _allocate(self, addr: L4Addr, given: set[int]) -> int:
        """The backend ID of ``addr``: its own, a draining one's (it comes back: it stays
        draining until the service is written), or the lowest free besides ``given``."""
        if addr in self._backend_ids:
            return self._backend_ids[addr]
        for backend_id, a in self._draining.items():
            if a == addr:
                return backend_id
        taken = set(self._backend_ids.values()) | set(self._draining) | given
        backend_id = 1
        while backend_id in taken:
            backend_id += 1
        if backend_id > MAX_BACKEND_ID:
            raise Conflict("no backend ID left")
        return backend_id

    def _write(self, svc: Service) -> None:
        """The service into the maps: up to 2 syscalls per backend, so callers on the
        event loop run it in a thread. The backend IDs it reads are settled before."""
        if self._lb is not None:
            self._lb.upsert_service(svc.id, svc.frontend, [(self._backend_ids[b], b) for b in svc.backends])

    def _release_unused(self) -> None:
        """Backends no service lists any more start draining."""
        used = {b for s in self._services.values() for b in s.backends}
        for addr in [a for a in self._backend_ids if a not in used]:
            self._draining[self._backend_ids.pop(addr)] = addr

    async def _rollback(self, svc: Service, old: Service | None, old_raw: bytes | None) -> None:
        """The maps refused a change: the store and the maps go back to ``old``."""
        svc_id = svc.id
        if self._lb is not None and (old is None or old.frontend != svc.frontend):
            try:
                await asyncio.to_thread(self._lb.delete_service, svc_id, svc.frontend)
            except Exception as exc:
                log.error("service.rollback.failed", id=svc_id, error=str(exc))
        if old_raw is None:
            await self._store.delete(keys.SERVICES + str(svc_id))
        else:  # a record restore skipped (``old`` None) goes back as it was too
            await self._store.put(keys.SERVICES + str(svc_id), old_raw)
        if old is None:
            self._services.pop(svc_id, None)
        else:
            self._services[svc_id] = old
        self._release_unused()
        if old is not None:
            try:
                await asyncio.to_thread(self._write, old)
            except Exception as exc:  # the maps are beyond repair here: logged, restart restores
                log.error("service.rollback.failed", id=svc_id, error=str(exc))
