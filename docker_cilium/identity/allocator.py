"""Cluster-wide allocation of numeric security identities, Cilium style.

An identity is the number the datapath and policy use instead of a label
set, so the one hard rule is: every node must map one label set to one
number, and no number may ever stand for two label sets (else one workload
would inherit another's policy).

KV layout (identical to Cilium's kvstore allocator):

* ``cilium/state/identities/v1/id/<ID>`` -> the label set's sorted key.  The
  *master key*: which label set owns the number.  Not leased.
* ``cilium/state/identities/v1/value/<labelkey>/<node>`` -> ``<ID>``.  A
  per-node *reference*, written with the session lease, so a dead node's
  references vanish with it and GC can later free the number.
* ``cilium/state/identities/v1/locks/<labelkey>`` -> holder token, leased.
  A per-label-set lock, like Cilium's ``LockPath``.

Why a lock when create_only already makes number claims atomic: create_only
on ``id/<ID>`` stops two label sets sharing a number, but it cannot stop two
nodes that both saw "no identity for L yet" from claiming two different
free numbers for L (e.g. when the number the first saw as free is taken and
freed in between).  Serializing "find or create" per label set closes that.
The same lock also closes the GC race: GC would otherwise read "no
references to L", a node would then find ``id/<N>`` = L and add its
reference, and GC would delete ``id/<N>`` underneath it, letting N be
reused for other labels.  GC therefore re-checks references while holding
L's lock and deletes with compare_and_delete (so a master key recreated
for other labels in the meantime is never deleted).  As defence in depth
an allocation re-reads the master key after writing its reference and
recreates or retries if it vanished.  The lock is leased, so a node that
dies holding it blocks others for at most one lease TTL.

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
import random
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, AsyncIterator

import structlog

from docker_cilium.errors import Unavailable
from docker_cilium.kvstore import Backend, EventType, KVStoreError, keys

from . import reserved
from .labels import Labels

log = structlog.get_logger(__name__)

PREFIX = keys.IDENTITIES
ID_PREFIX = PREFIX + "id/"
VALUE_PREFIX = PREFIX + "value/"
LOCK_PREFIX = PREFIX + "locks/"

MAX_ATTEMPTS = 200
LOCK_TIMEOUT_S = 30.0


class IdentityAllocationError(Unavailable):
    """No identity could be allocated (pool exhausted, lock never acquired...)."""


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


def _id_key(num: int) -> str:
    return f"{ID_PREFIX}{num}"


def _parse_id_key(key: str) -> int | None:
    rest = key[len(ID_PREFIX):]
    return int(rest) if rest.isdigit() else None


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
    ) -> None:
        if not node_name or "/" in node_name:
            raise ValueError(f"invalid node name {node_name!r}: must be non-empty without '/'")
        self.backend = backend
        self.node_name = node_name
        self.min_id = min_id
        self.max_id = max_id
        self.lock_timeout = lock_timeout
        self._local: dict[str, _LocalRef] = {}
        self._key_locks: dict[str, asyncio.Lock] = {}
        # Cache of master keys (id -> label key), kept fresh by the watch so
        # that get() on the datapath/policy hot path needs no round-trip.
        self._cache: dict[int, str] = {}
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
            num = await self._allocate_global(key)
            self._local[key] = _LocalRef(num, 1)
            self._cache[num] = key
        log.info("identity.allocated", id=num, labels=str(labels), node=self.node_name)
        return Identity(num, labels)

    async def _allocate_global(self, key: str) -> int:
        kb = key.encode()
        ref_key = self._ref_key(key)
        async with self._kv_lock(key):
            for attempt in range(MAX_ATTEMPTS):
                masters = await self.backend.get_prefix(ID_PREFIX)
                owned: list[int] = []
                used: set[int] = set()
                for k, v in masters.items():
                    n = _parse_id_key(k)
                    if n is None:
                        continue
                    used.add(n)
                    # Exact comparison of the whole label key: a prefix match
                    # would hand {a} the identity of {a, b}.
                    if v == kb:
                        owned.append(n)
                if owned:
                    num = min(owned)
                    if len(owned) > 1:
                        log.warning("identity.duplicate_master_keys", labels=key, ids=sorted(owned))
                else:
                    num = self._pick_free(used, attempt)
                    if not await self.backend.create_only(_id_key(num), kb):
                        # Another node claimed this number first (for other
                        # labels: ours are serialized by the lock). Rescan.
                        await asyncio.sleep(random.uniform(0, 0.005 * min(attempt + 1, 10)))
                        continue
                numb = str(num).encode()
                await self.backend.put(ref_key, numb, lease=True)
                cur = await self.backend.get(_id_key(num))
                if cur == kb:
                    return num
                if cur is None and await self.backend.create_only(_id_key(num), kb):
                    log.warning("identity.master_key_recreated", id=num, labels=key)
                    return num
                # The number now belongs to other labels: drop our reference.
                await self.backend.compare_and_delete(ref_key, numb)
                log.warning("identity.master_key_lost", id=num, labels=key, attempt=attempt)
        raise IdentityAllocationError(f"could not allocate an identity for {key!r} after {MAX_ATTEMPTS} attempts")

    def _pick_free(self, used: set[int], attempt: int) -> int:
        """Lowest free number first; after collisions, a random one of the lowest few.

        Lowest-first keeps numbers small and predictable; spreading out after
        a lost race stops every contending node from fighting over the same
        slot again.
        """
        want = 1 if attempt == 0 else min(4 * attempt + 4, 64)
        free: list[int] = []
        n = self.min_id
        while n <= self.max_id and len(free) < want:
            if n not in used:
                free.append(n)
            n += 1
        if not free:
            raise IdentityAllocationError(
                f"identity pool {self.min_id}-{self.max_id} exhausted ({len(used)} in use)"
            )
        return free[0] if want == 1 else random.choice(free)

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
            await self.backend.compare_and_delete(self._ref_key(key), str(ref.id).encode())
        log.info("identity.released", id=identity.id, labels=str(identity.labels), node=self.node_name)
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
            raw = await self.backend.get(_id_key(id))
            if raw is None:
                return None
            key = raw.decode()
            self._cache[id] = key
        return Identity(id, Labels.from_sorted_key(key))

    def cached(self) -> list[Identity]:
        """Allocated identities as last seen through the watch (no store round trip).

        Policy resolution runs on every regeneration and must not wait on the
        store; the watch keeps this cache current cluster-wide.
        """
        return [Identity(num, Labels.from_sorted_key(key)) for num, key in sorted(self._cache.items())]

    async def list(self, include_reserved: bool = False) -> list[Identity]:
        """All allocated identities, from the store (authoritative), by number."""
        out = []
        if include_reserved:
            out = [Identity(n, lbls) for n, lbls in sorted(reserved.all_reserved().items())]
        masters = await self.backend.get_prefix(ID_PREFIX)
        for k, v in sorted(masters.items(), key=lambda kv: _parse_id_key(kv[0]) or 0):
            n = _parse_id_key(k)
            if n is not None:
                out.append(Identity(n, Labels.from_sorted_key(v.decode())))
        return out

    # --------------------------------------------------------------------- gc

    async def gc(self) -> list[int]:
        """Delete master keys no node references any more; returns freed numbers.

        Safe to run on every node concurrently (see the module docstring).
        """
        masters = await self.backend.get_prefix(ID_PREFIX)
        refs = await self.backend.get_prefix(VALUE_PREFIX)
        referenced = {self._label_key_of_ref(k) for k in refs}
        freed: list[int] = []
        for k, v in masters.items():
            num = _parse_id_key(k)
            key = v.decode()
            if num is None or key in referenced:
                continue
            async with self._kv_lock(key):
                if key in self._local or await self._has_refs(key):
                    continue
                if await self.backend.compare_and_delete(k, v):
                    freed.append(num)
                    self._cache.pop(num, None)
                    log.info("identity.gc_freed", id=num, labels=key, node=self.node_name)
        return sorted(freed)

    async def _has_refs(self, key: str) -> bool:
        prefix = self._ref_prefix(key)
        # Exact: the remainder after "<labelkey>/" must be a bare node name.
        return any("/" not in k[len(prefix):] for k in await self.backend.get_prefix(prefix))

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
            kb = key.encode()
            numb = str(ref.id).encode()
            async with self._kv_lock(key):
                cur = await self.backend.get(_id_key(ref.id))
                if cur is None and await self.backend.create_only(_id_key(ref.id), kb):
                    log.warning("identity.master_key_recreated", id=ref.id, labels=key, node=self.node_name)
                    cur = kb
                if cur == kb:
                    await self.backend.put(self._ref_key(key), numb, lease=True)
                    return
                # Our number now means other labels: never use it again for ours.
                await self.backend.compare_and_delete(self._ref_key(key), numb)
            old = ref.id
            ref.id = await self._allocate_global(key)
            self._cache[ref.id] = key
            now = cur.decode() if cur is not None else None
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
                await self.backend.put(self._ref_key(key), str(ref.id).encode(), lease=True)

    async def _resync_key_retrying(self, key: str) -> None:
        await self._retrying(key, self._resync_key)

    @staticmethod
    async def _retrying(key: str, step: Callable[[str], Any]) -> None:
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
                masters = await self.backend.get_prefix(ID_PREFIX)
                self._cache = {n: v.decode() for k, v in masters.items() if (n := _parse_id_key(k)) is not None}
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
            num = _parse_id_key(key)
            if num is None:
                return
            before = self._cache.get(num)
            if typ is EventType.PUT and value is not None:
                self._cache[num] = value.decode()
            else:
                self._cache.pop(num, None)
            if self._cache.get(num) != before:
                self._notify()
        elif typ is EventType.DELETE and key.startswith(VALUE_PREFIX) and key.endswith("/" + self.node_name):
            label_key = self._label_key_of_ref(key)
            if label_key in self._local:
                # Our reference vanished while still in use (lease expired or
                # was revoked): put it back before GC frees the number.
                t = asyncio.create_task(self._resync_key_retrying(label_key))
                self._bg.add(t)
                t.add_done_callback(self._bg.discard)

    # ---------------------------------------------------------------- helpers

    def _ref_prefix(self, key: str) -> str:
        return f"{VALUE_PREFIX}{key}/"

    def _ref_key(self, key: str) -> str:
        return f"{self._ref_prefix(key)}{self.node_name}"

    @staticmethod
    def _label_key_of_ref(ref_key: str) -> str:
        # Node names never contain '/', label keys may: split on the last one.
        return ref_key[len(VALUE_PREFIX):].rsplit("/", 1)[0]

    def _key_lock(self, key: str) -> asyncio.Lock:
        lock = self._key_locks.get(key)
        if lock is None:
            lock = self._key_locks[key] = asyncio.Lock()
        return lock

    @contextlib.asynccontextmanager
    async def _kv_lock(self, key: str) -> AsyncIterator[None]:
        """Cluster-wide mutex for one label set (leased, so a dead holder times out)."""
        lock_key = LOCK_PREFIX + key
        token = f"{self.node_name}/{uuid.uuid4().hex}".encode()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.lock_timeout
        delay = 0.005
        while not await self.backend.create_only(lock_key, token, lease=True):
            if loop.time() > deadline:
                holder = await self.backend.get(lock_key)
                raise IdentityAllocationError(
                    f"timed out after {self.lock_timeout}s waiting for lock {lock_key!r} held by {holder!r}"
                )
            await asyncio.sleep(random.uniform(delay / 2, delay))
            delay = min(delay * 1.5, 0.1)
        try:
            yield
        finally:
            # Shield the unlock: a cancelled allocation must not leave the
            # lock held until its lease expires.
            with contextlib.suppress(KVStoreError):
                await asyncio.shield(self.backend.compare_and_delete(lock_key, token))
