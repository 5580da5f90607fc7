"""The services of this node: IDs, backend IDs, their records and the LB maps.

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

With a cluster store (``cluster`` given: ``service/cluster.py``) the records
are cluster-wide instead: a change is written there (IDs allocated through
the store), then into this node's maps (the store reverted if they refuse),
and every agent watches the records and programs its maps from them, so a
VIP works the same from every node. Backend IDs stay node-local (the maps'
business): a restart takes them back from the backends map. While the store
is down the maps keep what they have and changes are refused (503).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import replace
from typing import Any

import structlog

from docker_cilium.datapath.maps.lbmap import LBMap, L4Addr
from docker_cilium.errors import Conflict, Unavailable
from docker_cilium.kvstore import keys
from docker_cilium.kvstore.backend import Backend, KVStoreError
from docker_cilium.kvstore.store import SharedStore
from docker_cilium.service.cluster import ClusterServices, decode, frontend_name, next_id
from docker_cilium.service.model import MAX_SERVICE_ID, Service, format_addr

log = structlog.get_logger(__name__)

MAX_BACKEND_ID = 0xFFFFFFFF
#: Wait before applying again a cluster service this node's maps refused.
APPLY_RETRY_S = 5.0


def _record(svc: Service, ids: dict[L4Addr, int]) -> bytes:
    return json.dumps({"id": svc.id, "frontend": vars(svc.frontend),
                       "backends": [{**vars(b), "backend-id": ids[b]} for b in svc.backends]}).encode()


def _from_record(raw: bytes) -> tuple[Service, dict[L4Addr, int]]:
    doc: dict[str, Any] = json.loads(raw)
    backends = [(L4Addr(b["ip"], b["port"], b["protocol"]), int(b["backend-id"])) for b in doc["backends"]]
    svc = Service(int(doc["id"]), L4Addr(**doc["frontend"]), tuple(a for a, _ in backends))
    return svc, dict(backends)


def _unreachable(exc: KVStoreError) -> Unavailable:
    return Unavailable(f"services are cluster-wide and the cluster store cannot be reached ({exc}): "
                       "no change is possible now; the datapath keeps serving the services it has")


class ServiceManager:
    """`cilium service`: the services, their maps and their records. ``lb`` None: no datapath (unit tests);
    ``cluster`` None: node-local services in ``store``, else cluster-wide ones."""

    def __init__(self, store: Backend, lb: LBMap | None, cluster: ClusterServices | None = None) -> None:
        self._store = store
        self._lb = lb
        self._cluster = cluster
        self._watch: SharedStore | None = None
        self._pending: set[str] = set()                # cluster records changed, not applied yet
        self._shadowed: set[str] = set()               # records whose frontend another ID holds here
        self._apply_task: asyncio.Task[None] | None = None
        self._live = False                             # records restored: changes apply as they come
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
        Backends in the map that no service uses are draining. Returns how many services.
        With a cluster store: its records, then watched."""
        if self._cluster is not None:
            return await self._restore_cluster(self._cluster)
        records = await self._store.get_prefix(keys.SERVICES)
        for key, raw in records.items():
            try:
                svc, ids = _from_record(raw)
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("service.restore.skipped", key=key, error=str(exc))
                continue
            self._services[svc.id] = svc
            self._backend_ids.update(ids)
        self._program_all()
        log.info("service.restored", services=len(self._services), draining_backends=len(self._draining))
        return len(self._services)

    async def _restore_cluster(self, cluster: ClusterServices) -> int:
        """The cluster's records (listed, then watched) into the maps. A backend keeps
        the ID the backends map gives it (connections' CT_SERVICE entries name it)."""
        self._watch = SharedStore(cluster.backend, cluster.ids, self, what="services")
        await self._watch.start()
        in_map = {a: i for i, a in self._lb.backends().items()} if self._lb is not None else {}
        for name in sorted(self._pending, key=lambda n: (len(n), n)):
            svc = self._record(name)
            if svc is None:
                continue
            if self._holder(svc) is not None:
                self._shadowed.add(name)
                continue
            self._services[svc.id] = svc
            self._backend_ids.update({b: in_map[b] for b in svc.backends if b in in_map})
        self._pending.clear()
        used = set(self._backend_ids.values())
        self._draining = {i: a for a, i in in_map.items() if i not in used}
        for svc in self._services.values():
            for b in svc.backends:
                if b not in self._backend_ids:
                    self._backend_ids[b] = self._allocate(b, set())
        self._program_all()
        self._live = True
        log.info("service.restored", services=len(self._services), draining_backends=len(self._draining),
                 store="cluster")
        return len(self._services)

    def _program_all(self) -> None:
        """The maps hold exactly the services known (restore)."""
        if self._lb is not None:
            wanted = {(s.id, s.frontend) for s in self._services.values()}
            for old in self._lb.dump():
                if (old.id, old.frontend) not in wanted:
                    self._lb.delete_service(old.id, old.frontend)
            for svc in self._services.values():
                self._write(svc)
            used = set(self._backend_ids.values())
            self._draining = {i: a for i, a in self._lb.backends().items() if i not in used}

    # -- changes --------------------------------------------------------------------------
    async def upsert(self, svc: Service) -> bool:
        """Create or replace service ``svc.id``; True if it was created.
        Conflict if another service has the frontend."""
        return (await self.put(svc))[1]

    async def put(self, svc: Service) -> tuple[Service, bool]:
        """Create or replace ``svc``: the service as stored and whether it was created.
        ``svc.id`` 0 asks for an ID: the frontend's own if it is a service, else a new one."""
        async with self._lock:
            if self._cluster is not None:
                return await self._put_cluster(self._cluster, svc)
            if svc.id == 0:
                held = self._holder(svc)
                svc = replace(svc, id=held or next_id(set(self._services)))
            holder = self._holder(svc)
            if holder is not None:
                raise Conflict(f"frontend {format_addr(svc.frontend)}/{svc.frontend.protocol} "
                               f"is service {holder}'s")
            old = self._services.get(svc.id)
            ids = self._allocate_all(svc)
            old_raw = await self._store.get(keys.SERVICES + str(svc.id))
            await self._store.put(keys.SERVICES + str(svc.id), _record(svc, ids))
            try:
                await self._commit(svc, old, ids)
            except Exception:
                if old_raw is None:
                    await self._store.delete(keys.SERVICES + str(svc.id))
                else:  # a record restore skipped (``old`` None) goes back as it was too
                    await self._store.put(keys.SERVICES + str(svc.id), old_raw)
                raise
            return svc, old is None

    async def _put_cluster(self, cluster: ClusterServices, svc: Service) -> tuple[Service, bool]:
        """Into the cluster store (the ID claimed there), then into this node's maps; the
        store is reverted if they refuse. The other agents apply it from their watch."""
        try:
            stored, created, previous = await cluster.upsert(svc)
        except KVStoreError as exc:
            raise _unreachable(exc) from exc
        try:
            holder = self._holder(stored)
            if holder is not None:  # the store gave the frontend to this ID: our view is behind
                await self._remove(holder)
            await self._commit(stored, self._services.get(stored.id), self._allocate_all(stored))
        except Exception:
            try:
                await cluster.revert(stored, created, previous)
            except KVStoreError as exc:
                log.error("service.revert.failed", id=stored.id, error=str(exc))
            raise
        return stored, created

    async def delete(self, svc_id: int) -> bool:
        """Remove service ``svc_id``; False if there is none."""
        async with self._lock:
            if self._cluster is not None:
                try:
                    gone = await self._cluster.delete(svc_id)
                except KVStoreError as exc:
                    raise _unreachable(exc) from exc
                if svc_id in self._services:
                    await self._remove(svc_id)
                return gone is not None
            if svc_id not in self._services:
                return False
            await self._store.delete(keys.SERVICES + str(svc_id))
            await self._remove(svc_id)
            return True

    async def _remove(self, svc_id: int) -> None:
        svc = self._services.pop(svc_id)
        if self._lb is not None:
            await asyncio.to_thread(self._lb.delete_service, svc_id, svc.frontend)
        self._release_unused()
        log.info("service.deleted", id=svc_id, frontend=format_addr(svc.frontend))

    # -- the cluster store's records (StoreObserver) ----------------------------------------
    def on_update(self, name: str, value: bytes) -> None:
        self._changed(name)

    def on_delete(self, name: str) -> None:
        self._changed(name)

    def _changed(self, name: str) -> None:
        """Applied in the background, under the lock, from the view (coalesced: the latest record)."""
        self._pending.add(name)
        if self._live and (self._apply_task is None or self._apply_task.done()):
            self._apply_task = asyncio.create_task(self._apply_pending(), name="service-apply")

    async def _apply_pending(self) -> None:
        while self._pending:
            name = self._pending.pop()
            async with self._lock:
                try:
                    await self._sync(name)
                except Exception:  # this node's maps refused it: logged, tried again later
                    log.exception("service.apply_failed", key=name, retry_s=APPLY_RETRY_S)
                    asyncio.get_running_loop().call_later(APPLY_RETRY_S, self._changed, name)

    def _record(self, name: str) -> Service | None:
        """The service record ``name`` in the watched view, None if absent or unreadable."""
        raw = self._watch.view.get(name) if self._watch is not None else None
        if raw is None:
            return None
        try:
            svc = decode(raw)
            if str(svc.id) != name:
                raise ValueError(f"record names service {svc.id}")
        except ValueError as exc:
            log.warning("service.bad_record", key=name, error=str(exc))
            return None
        return svc

    async def _sync(self, name: str) -> None:
        """This node's maps follow record ``name``."""
        if not (name.isdigit() and 1 <= int(name) <= MAX_SERVICE_ID):
            return
        svc_id, svc = int(name), self._record(name)
        self._shadowed.discard(name)
        if svc is None:
            if svc_id in self._services:
                await self._remove(svc_id)
                self._pending |= self._shadowed  # one of them may have the frontend to itself now
            return
        if self._services.get(svc_id) == svc:
            return
        holder = self._holder(svc)
        if holder is not None:  # transient: an agent withdraws a record that lost its frontend claim
            self._shadowed.add(name)
            log.warning("service.frontend_held", id=svc_id, frontend=frontend_name(svc.frontend), holder=holder)
            return
        old = self._services.get(svc_id)
        await self._commit(svc, old, self._allocate_all(svc))
        if old is not None and old.frontend != svc.frontend:
            self._pending |= self._shadowed

    async def close(self) -> None:
        """Stop watching the cluster store (the maps keep what they have)."""
        self._live = False
        if self._watch is not None:
            await self._watch.close()
        task, self._apply_task = self._apply_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

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
    def _holder(self, svc: Service) -> int | None:
        """The ID of another service here with ``svc``'s frontend."""
        for other in self._services.values():
            if other.id != svc.id and other.frontend == svc.frontend:
                return other.id
        return None

    def _allocate_all(self, svc: Service) -> dict[L4Addr, int]:
        ids: dict[L4Addr, int] = {}
        for b in svc.backends:
            ids[b] = self._allocate(b, set(ids.values()))
        return ids

    async def _commit(self, svc: Service, old: Service | None, ids: dict[L4Addr, int]) -> None:
        """``svc`` (replacing ``old``) into the maps with backend IDs ``ids``; if the maps
        refuse, they and the view go back to ``old`` and the error is raised."""
        try:
            if old is not None and old.frontend != svc.frontend and self._lb is not None:
                await asyncio.to_thread(self._lb.delete_service, old.id, old.frontend)
            self._services[svc.id] = svc
            self._backend_ids.update(ids)
            for backend_id in ids.values():
                self._draining.pop(backend_id, None)
            await asyncio.to_thread(self._write, svc)
        except Exception:
            await self._undo(svc, old)
            raise
        self._release_unused()
        log.info("service.upserted", id=svc.id, frontend=format_addr(svc.frontend),
                 protocol=svc.frontend.protocol, backends=[format_addr(b) for b in svc.backends])

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

    async def _undo(self, svc: Service, old: Service | None) -> None:
        """The maps refused ``svc``: they and the view go back to ``old``."""
        svc_id = svc.id
        if self._lb is not None and (old is None or old.frontend != svc.frontend):
            try:
                await asyncio.to_thread(self._lb.delete_service, svc_id, svc.frontend)
            except Exception as exc:
                log.error("service.rollback.failed", id=svc_id, error=str(exc))
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
