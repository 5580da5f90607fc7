"""The kvstore side of identity allocation: key layout, per-label-set lock, GC.

This is Cilium's ``pkg/kvstore/allocator`` (``kvstoreBackend``): how a node
claims a number for a label set in the shared store so that every node maps
one label set to one number and no number ever stands for two label sets
(else one workload would inherit another's policy).  The node's own
reference counting, watch cache and session-loss recovery live in
:mod:`.allocator` (Cilium's ``pkg/allocator``).

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
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid
from typing import AsyncIterator, Callable

import structlog

from docker_cilium.errors import Unavailable
from docker_cilium.kvstore import Backend, KVStoreError, keys

from . import reserved

log = structlog.get_logger(__name__)

PREFIX = keys.IDENTITIES
ID_PREFIX = PREFIX + "id/"
VALUE_PREFIX = PREFIX + "value/"
LOCK_PREFIX = PREFIX + "locks/"

MAX_ATTEMPTS = 200
LOCK_TIMEOUT_S = 30.0


class IdentityAllocationError(Unavailable):
    """No identity could be allocated (pool exhausted, lock never acquired...)."""


def id_key(num: int) -> str:
    return f"{ID_PREFIX}{num}"


def parse_id_key(key: str) -> int | None:
    """The number of a master key, None for anything else under the prefix."""
    rest = key[len(ID_PREFIX):]
    return int(rest) if rest.isdigit() else None


def label_key_of_ref(ref_key: str) -> str:
    """The label key of a reference key (``value/<labelkey>/<node>``)."""
    # Node names never contain '/', label keys may: split on the last one.
    return ref_key[len(VALUE_PREFIX):].rsplit("/", 1)[0]


class KVStoreBackend:
    """One node's view of the shared identity keys; safe on many nodes at once."""

    def __init__(
        self,
        store: Backend,
        node_name: str,
        *,
        min_id: int = reserved.MIN_ALLOCATED,
        max_id: int = reserved.MAX,
        lock_timeout: float = LOCK_TIMEOUT_S,
    ) -> None:
        if not node_name or "/" in node_name:
            raise ValueError(f"invalid node name {node_name!r}: must be non-empty without '/'")
        self.store = store
        self.node_name = node_name
        self.min_id = min_id
        self.max_id = max_id
        self.lock_timeout = lock_timeout

    # ------------------------------------------------------------- allocation

    async def allocate_id(self, key: str) -> int:
        """Find or claim the number for label key ``key`` and add this node's reference.

        Cancelled after the reference was written (the caller never learns
        the number, so it would never release it), the reference is deleted
        again before the cancellation goes on."""
        written: bytes | None = None
        try:
            async with self.lock(key):
                for attempt in range(MAX_ATTEMPTS):
                    num = await self._find_or_claim(key, attempt)
                    if num is None:
                        continue
                    written = str(num).encode()
                    if await self._reference(key, num):
                        return num
                    written = None
        except BaseException:
            if written is not None:
                with contextlib.suppress(KVStoreError):
                    await asyncio.shield(self.store.compare_and_delete(self.ref_key(key), written))
            raise
        raise IdentityAllocationError(f"could not allocate an identity for {key!r} after {MAX_ATTEMPTS} attempts")

    async def _find_or_claim(self, key: str, attempt: int) -> int | None:
        """The number ``key`` owns, or a free one claimed for it; None after a
        lost race for a free number (rescan)."""
        masters = await self.masters()
        # Exact comparison of the whole label key: a prefix match would hand
        # {a} the identity of {a, b}.
        owned = [n for n, v in masters.items() if v == key]
        if owned:
            if len(owned) > 1:
                log.warning("identity.duplicate_master_keys", labels=key, ids=sorted(owned))
            return min(owned)
        num = self._pick_free(set(masters), attempt)
        if await self.store.create_only(id_key(num), key.encode()):
            return num
        # Another node claimed this number first (for other labels: ours are
        # serialized by the lock). Rescan.
        await asyncio.sleep(random.uniform(0, 0.005 * min(attempt + 1, 10)))
        return None

    async def _reference(self, key: str, num: int) -> bool:
        """Write this node's reference to ``num``; False (reference dropped) if
        the number meanwhile went to other labels."""
        kb, numb, ref_key = key.encode(), str(num).encode(), self.ref_key(key)
        await self.store.put(ref_key, numb, lease=True)
        cur = await self.store.get(id_key(num))
        if cur == kb:
            return True
        if cur is None and await self.store.create_only(id_key(num), kb):
            log.warning("identity.master_key_recreated", id=num, labels=key)
            return True
        await self.store.compare_and_delete(ref_key, numb)
        log.warning("identity.master_key_lost", id=num, labels=key)
        return False

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

    async def put_reference(self, key: str, num: int) -> None:
        """(Re)write this node's leased reference to ``num`` for ``key``."""
        await self.store.put(self.ref_key(key), str(num).encode(), lease=True)

    async def release(self, key: str, num: int) -> None:
        """Delete this node's reference; the number stays until :meth:`gc` frees it."""
        await self.store.compare_and_delete(self.ref_key(key), str(num).encode())

    async def update_key(self, key: str, num: int) -> tuple[bool, str | None]:
        """Re-assert that ``num`` is ``key``'s: (True, key) if it still is, else (False, owner).

        Under the label set's lock: a missing master key is recreated and the
        reference written again; a number meanwhile given to other labels is
        never used again for ours, so our reference to it is dropped and the
        caller allocates anew.
        """
        kb = key.encode()
        async with self.lock(key):
            cur = await self.store.get(id_key(num))
            if cur is None and await self.store.create_only(id_key(num), kb):
                log.warning("identity.master_key_recreated", id=num, labels=key, node=self.node_name)
                cur = kb
            if cur == kb:
                await self.put_reference(key, num)
                return True, key
            await self.release(key, num)
        return False, cur.decode() if cur is not None else None

    # ----------------------------------------------------------------- lookup

    async def masters(self) -> dict[int, str]:
        """Every master key in the store: number -> label key."""
        raw = await self.store.get_prefix(ID_PREFIX)
        return {n: v.decode() for k, v in raw.items() if (n := parse_id_key(k)) is not None}

    async def get_by_id(self, num: int) -> str | None:
        raw = await self.store.get(id_key(num))
        return raw.decode() if raw is not None else None

    def is_own_reference(self, key: str) -> bool:
        """Whether ``key`` is a reference this node wrote."""
        return key.startswith(VALUE_PREFIX) and key.endswith("/" + self.node_name)

    # --------------------------------------------------------------------- gc

    async def gc(self, in_use: Callable[[str], bool]) -> list[tuple[int, str]]:
        """Delete master keys no node references; returns the (number, label key) freed.

        ``in_use(key)`` says whether this node holds ``key`` locally (and is
        about to write, or has just written, its reference); it is asked
        under the label set's lock.  Safe to run on every node concurrently
        (see the module docstring).
        """
        masters = await self.store.get_prefix(ID_PREFIX)
        refs = await self.store.get_prefix(VALUE_PREFIX)
        referenced = {label_key_of_ref(k) for k in refs}
        freed: list[tuple[int, str]] = []
        for k, v in masters.items():
            num = parse_id_key(k)
            key = v.decode()
            if num is None or key in referenced:
                continue
            async with self.lock(key):
                if in_use(key) or await self._has_refs(key):
                    continue
                if await self.store.compare_and_delete(k, v):
                    freed.append((num, key))
                    log.info("identity.gc_freed", id=num, labels=key, node=self.node_name)
        return sorted(freed)

    async def _has_refs(self, key: str) -> bool:
        prefix = self._ref_prefix(key)
        # Exact: the remainder after "<labelkey>/" must be a bare node name.
        return any("/" not in k[len(prefix):] for k in await self.store.get_prefix(prefix))

    # ---------------------------------------------------------------- helpers

    def _ref_prefix(self, key: str) -> str:
        return f"{VALUE_PREFIX}{key}/"

    def ref_key(self, key: str) -> str:
        return f"{self._ref_prefix(key)}{self.node_name}"

    @contextlib.asynccontextmanager
    async def lock(self, key: str) -> AsyncIterator[None]:
        """Cluster-wide mutex for one label set (leased, so a dead holder times out)."""
        lock_key = LOCK_PREFIX + key
        token = f"{self.node_name}/{uuid.uuid4().hex}".encode()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.lock_timeout
        delay = 0.005
        while not await self.store.create_only(lock_key, token, lease=True):
            if loop.time() > deadline:
                holder = await self.store.get(lock_key)
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
                await asyncio.shield(self.store.compare_and_delete(lock_key, token))
