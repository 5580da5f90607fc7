"""Cluster-wide allocation of numeric security identities, Cilium style.

An identity is the number the datapath and policy use instead of a label
set.  This module is the node's side (Cilium's ``pkg/allocator``): local
references counted per label set (one store reference per node, however
many endpoints share the labels), the watched cache of every master key,
and recovery after a session loss.  How a number is claimed, locked,
referenced and garbage-collected in the store is :mod:`.kvbackend`.

Session loss: when the store replaces this node's lease (it expired during
an outage longer than the TTL), every reference this node wrote is gone and
other nodes' GC may free the numbers.  The allocator then first writes all
its references again, then re-checks each master key under its lock: a
freed one is recreated; one that meanwhile went to other labels is never
used again for ours: the conflict is logged as an error and kept for
``status()``, the labels get a new number, and the subscribers are called so that
endpoints move to it.  A watch that had to re-list (and so may have missed
the deletions) triggers the same resync.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import structlog

from docker_cilium.kvstore import Backend, EventType, KVStoreError
from docker_cilium.monitor.notify import AGENT_IDENTITY_ALLOCATED, AGENT_IDENTITY_RELEASED, AgentNotifier, NoNotifier

from . import reserved
from .kvbackend import (
    ID_PREFIX,
    LOCK_TIMEOUT_S,
    PREFIX,
    IdentityAllocationError,
    KVStoreBackend,
    label_key_of_ref,
    parse_id_key,
)
from .labels import Labels

log = structlog.get_logger(__name__)

__all__ = ["Identity", "IdentityAllocationError", "IdentityAllocator"]


@dataclass(frozen=True)
class Identity:
    id: int
    labels: Labels

    @property
    def is_reserved(self) -> bool:
        return reserved.is_reserved(self.id)

    def __str__(self) -> str:
        return f"{self.id} [{self.labels}]"


@dataclass
class _LocalRef:
    id: int
    refcount: int


class IdentityAllocator:
    """Allocates identities for one node; safe to run on many nodes at once."""

    def __init__(
        self,
        backend: Backend,
        node_name: str,
        *,
        min_id: int = reserved.MIN_ALLOCATED,
        max_id: int = reserved.MAX,
        lock_timeout: float = LOCK_TIMEOUT_S,
        monitor: AgentNotifier | None = None,
    ) -> None:
        self.monitor: AgentNotifier = monitor or NoNotifier()
        self.kv = KVStoreBackend(backend, node_name, min_id=min_id, max_id=max_id, lock_timeout=lock_timeout)
        self.backend = backend
        self.node_name = node_name
        # Label key -> the number this node uses and how many holders it has.
        self._local: dict[str, _LocalRef] = {}
        self._key_locks: dict[str, asyncio.Lock] = {}
        # Cache of master keys (id -> label key), kept fresh by the watch so
        # that get() on the datapath/policy hot path needs no round-trip.
        self._cache: dict[int, str] = {}
        self._restored: dict[int, tuple[str, int]] = {}  # number -> (label key, holders): hold_restored
        self._watch_task: asyncio.Task[None] | None = None
        self._synced = asyncio.Event()
        self._bg: set[asyncio.Task[None]] = set()
        self._observers: list[Callable[[], None]] = []  # see subscribe()
        # Numbers that came back owned by other labels after a session loss.
        self.conflicts: list[dict[str, Any]] = []
        self.session_losses = 0
        self._recovering: asyncio.Task[None] | None = None
        self._recover_again = False
        self._closed = False
        backend.add_session_listener(self._on_session_lost)

    def _notify(self) -> None:
        for observer in self._observers:
            observer()

    def subscribe(self, observer: Callable[[], None]) -> None:
        """Call ``observer`` (no arguments) whenever the set of identities
        changes, e.g. another node allocated one: local policies may select it;
        also when one of our label sets had to move to a new number (see current())."""
        self._observers.append(observer)

    # -------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Load the identity cache and keep it fresh with a watch."""
        self._closed = False
        if self._watch_task is None:
            self._watch_task = asyncio.create_task(self._watch_loop(), name=f"identity-watch-{self.node_name}")
            await self._synced.wait()

    async def close(self) -> None:
        """Stop the watch; node references stay until the session ends."""
        self._closed = True
        tasks = [t for t in (self._watch_task, *self._bg) if t is not None]
        self._watch_task = None
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._bg.clear()
        self._synced.clear()

    async def __aenter__(self) -> "IdentityAllocator":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------- allocation

    async def allocate(self, labels: Labels) -> Identity:
        """Identity for ``labels``, shared with every node that has the same set.

        Each call takes one local reference; balance it with :meth:`release`.
        """
        num = reserved.lookup(labels)
        if num is not None:
            return Identity(num, labels)
        key = labels.sorted_key()
        async with self._key_lock(key):
            ref = self._local.get(key)
            if ref is not None:
                ref.refcount += 1
                return Identity(ref.id, labels)
            num = await self.kv.allocate_id(key)
            self._local[key] = _LocalRef(num, 1)
            self._cache[num] = key
        log.info("identity.allocated", id=num, labels=str(labels), node=self.node_name)
        self.monitor.agent_event(AGENT_IDENTITY_ALLOCATED, {"id": num, "labels": labels.to_strings()})
        return Identity(num, labels)

    async def release(self, identity: Identity) -> bool:
        """Drop one local reference; True if this node no longer uses the identity.

        Only the node reference goes away; the number itself is freed by
        :meth:`gc` once no node references it.
        """
        if reserved.lookup(identity.labels) is not None or identity.is_reserved:
            return False
        key = identity.labels.sorted_key()
        async with self._key_lock(key):
            ref = self._local.get(key)
            if ref is None:
                log.warning("identity.release_unknown", id=identity.id, labels=str(identity.labels))
                return False
            ref.refcount -= 1
            if ref.refcount > 0:
                return False
            del self._local[key]
            await self.kv.release(key, ref.id)
        log.info("identity.released", id=identity.id, labels=str(identity.labels), node=self.node_name)
        self.monitor.agent_event(AGENT_IDENTITY_RELEASED, {"id": identity.id, "labels": identity.labels.to_strings()})
        return True

    def current(self, identity: Identity) -> Identity:
        """The number this node uses now for ``identity``'s labels.

        Differs from ``identity.id`` only after a resync found that number
        given to other labels: holders must switch (the old one is refused).
        """
        ref = self._local.get(identity.labels.sorted_key())
        return Identity(ref.id, identity.labels) if ref is not None else identity

    # ----------------------------------------------------------------- lookup

    async def get(self, id: int) -> Identity | None:
        labels = reserved.labels_for(id)
        if labels is not None:
            return Identity(id, labels)
        key = self._cache.get(id)
        if key is None:
            key = await self.kv.get_by_id(id)
            if key is None:
                return None
            self._cache[id] = key
        return Identity(id, Labels.from_sorted_key(key))

    def cached(self) -> list[Identity]:
        """Allocated identities as last seen through the watch (no store round trip).

        Policy resolution runs on every regeneration and must not wait on the
        store; the watch keeps this cache current cluster-wide. Numbers
        restored endpoints hold (:meth:`hold_restored`) fill what it lacks.
        """
        known = {**{num: key for num, (key, _) in self._restored.items()}, **self._cache}
        return [Identity(num, Labels.from_sorted_key(key)) for num, key in sorted(known.items())]

    def cached_identity(self, num: int) -> Identity | None:
        """One allocated identity as last seen through the watch, or None."""
        key = self._cache.get(num) or self._restored.get(num, ("", 0))[0]
        return Identity(num, Labels.from_sorted_key(key)) if key else None

    def hold_restored(self, identity: Identity) -> None:
        """An endpoint restored from its record holds ``identity`` (in its
        maps and the ipcache) while allocation has not got through: until
        then :meth:`cached` lists it where the watch has nothing for its
        number, so peers' policies keep selecting it while the store is down.
        Balance with :meth:`drop_restored`."""
        key, count = self._restored.get(identity.id, (identity.labels.sorted_key(), 0))
        self._restored[identity.id] = (key, count + 1)

    def drop_restored(self, identity: Identity) -> None:
        key, count = self._restored.get(identity.id, ("", 0))
        if count <= 1:
            self._restored.pop(identity.id, None)
        else:
            self._restored[identity.id] = (key, count - 1)

    async def list(self, include_reserved: bool = False) -> list[Identity]:
        """All allocated identities, from the store (authoritative), by number."""
        out = []
        if include_reserved:
            out = [Identity(n, lbls) for n, lbls in sorted(reserved.all_reserved().items())]
        masters = await self.kv.masters()
        out.extend(Identity(n, Labels.from_sorted_key(key)) for n, key in sorted(masters.items()))
        return out

    async def gc(self) -> list[int]:
        """Delete master keys no node references any more; returns freed numbers.

        Safe to run on every node concurrently (see :mod:`.kvbackend`).
        """
        freed = await self.kv.gc(lambda key: key in self._local)
        for num, _key in freed:
            self._cache.pop(num, None)
        return [num for num, _key in freed]

    # ----------------------------------------------------------------- resync

    async def resync(self) -> None:
        """Re-assert this node's references (run on its own after a session loss).

        Runs under each label set's lock and recreates a missing master key;
        a number meanwhile given to other labels is replaced (see the module
        docstring) and the subscribers are called.
        """
        for key in list(self._local):
            await self._resync_key(key)

    async def _resync_key(self, key: str) -> None:
        async with self._key_lock(key):
            ref = self._local.get(key)
            if ref is None:
                return
            kept, now = await self.kv.update_key(key, ref.id)
            if kept:
                return
            # Our number now means other labels: never use it again for ours.
            old = ref.id
            ref.id = await self.kv.allocate_id(key)
            self._cache[ref.id] = key
            self.conflicts.append({"id": old, "labels": key, "now-owned-by": now, "new-id": ref.id,
                                   "time": time.time()})
            log.error("identity.conflict_on_resync", id=old, labels=key, now_owned_by=now, new_id=ref.id,
                      node=self.node_name, hint="endpoints with these labels move to the new identity")
        self._notify()

    def _on_session_lost(self) -> None:
        """The store replaced our lease: every reference we wrote is gone."""
        if self._closed:
            return
        self.session_losses += 1
        log.error("identity.session_lost", node=self.node_name, identities=len(self._local))
        self._schedule_recovery()

    def _schedule_recovery(self) -> None:
        if self._recovering is not None and not self._recovering.done():
            self._recover_again = True
            return
        t = self._recovering = asyncio.get_running_loop().create_task(
            self._recover(), name=f"identity-recover-{self.node_name}")
        self._bg.add(t)
        t.add_done_callback(self._bg.discard)

    async def _recover(self) -> None:
        """References first (so no GC frees what we use), then a full resync."""
        self._recover_again = True
        while self._recover_again:
            self._recover_again = False
            for key in list(self._local):
                await self._retrying(key, self._reput_ref)
            for key in list(self._local):
                await self._retrying(key, self._resync_key)
            log.info("identity.resynced", node=self.node_name, identities=len(self._local))

    async def _reput_ref(self, key: str) -> None:
        async with self._key_lock(key):
            ref = self._local.get(key)
            if ref is not None:
                await self.kv.put_reference(key, ref.id)

    async def _resync_key_retrying(self, key: str) -> None:
        await self._retrying(key, self._resync_key)

    @staticmethod
    async def _retrying(key: str, step: Callable[[str], Awaitable[None]]) -> None:
        delay = 0.1
        while True:
            try:
                return await step(key)
            except (KVStoreError, IdentityAllocationError) as e:
                log.warning("identity.resync_failed", labels=key, error=str(e))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    def status(self) -> dict[str, Any]:
        """What `cilium status` shows about allocation health on this node."""
        return {
            "state": "Warning" if self.conflicts else "Ok",
            "identities": len(self._local),
            "session-losses": self.session_losses,
            "conflicts": list(self.conflicts),
        }

    # ------------------------------------------------------------------ watch

    async def _watch_loop(self) -> None:
        while True:
            try:
                # List, then watch from the listed revision (no gap).
                self._cache = await self.kv.masters()
                if self._synced.is_set() and self._local:
                    # A re-list: deletions of our references may have happened
                    # while the watch was down and will never be replayed.
                    self._schedule_recovery()
                self._synced.set()
                events = self.backend.watch(PREFIX)
                try:
                    async for ev in events:
                        self._on_event(ev.type, ev.key, ev.value)
                finally:
                    with contextlib.suppress(Exception):
                        await events.aclose()  # type: ignore[attr-defined]
            except asyncio.CancelledError:
                raise
            except Exception as e:  # store hiccup: re-list and watch again
                log.warning("identity.watch_failed", node=self.node_name, error=str(e))
                await asyncio.sleep(1.0)

    def _on_event(self, typ: EventType, key: str, value: bytes | None) -> None:
        if key.startswith(ID_PREFIX):
            num = parse_id_key(key)
            if num is None:
                return
            before = self._cache.get(num)
            if typ is EventType.PUT and value is not None:
                self._cache[num] = value.decode()
            else:
                self._cache.pop(num, None)
            if self._cache.get(num) != before:
                self._notify()
        elif typ is EventType.DELETE and self.kv.is_own_reference(key):
            label_key = label_key_of_ref(key)
            if label_key in self._local:
                # Our reference vanished while still in use (lease expired or
                # was revoked): put it back before GC frees the number.
                t = asyncio.create_task(self._resync_key_retrying(label_key))
                self._bg.add(t)
                t.add_done_callback(self._bg.discard)

    # ---------------------------------------------------------------- helpers

    def _key_lock(self, key: str) -> asyncio.Lock:
        """This node's lock for one label set (the store lock is :meth:`KVStoreBackend.lock`)."""
        lock = self._key_locks.get(key)
        if lock is None:
            lock = self._key_locks[key] = asyncio.Lock()
        return lock
