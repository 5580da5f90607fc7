"""The prefilter's deny list: revision checks, the node store, the CIDR tries.

As Cilium's ``PreFilter``: the revision starts at 1 and each successful
update or delete raises it by one; a request carrying a revision other than
0 is refused (409) unless it is the current one, so two clients that both
read revision N cannot both change it unseen. Unlike Cilium the list is
persisted (node store, ``keys.PREFILTER``) and written back into the tries
at start, before the XDP program is attached and before any socket opens,
so a restarted agent filters what it filtered before.

Each change is all or nothing: the tries are written first (what was written
is undone if a later write or the store write fails), then the record; the
in-memory list changes last.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Iterable, Protocol

import structlog

from docker_cilium.datapath.maps.cidrmap import CIDR_MAP_SIZE
from docker_cilium.errors import Conflict, InsufficientStorage, NotFound
from docker_cilium.kvstore import keys
from docker_cilium.kvstore.backend import Backend
from docker_cilium.prefilter.spec import Network, PrefilterSpec, parse_cidr, sort_key

log = structlog.get_logger(__name__)


def _head(nets: Iterable[Network], n: int = 10) -> list[str]:
    """The first few prefixes of a change for its log line (a request may carry 65536)."""
    return [str(net) for _, net in zip(range(n), nets)]


class CIDRTries(Protocol):
    """What the manager needs of the deny tries (datapath/maps/cidrmap.CIDRMap)."""

    def insert(self, net: Network) -> None: ...

    def delete(self, net: Network) -> bool: ...

    def dump(self) -> list[Network]: ...


class PreFilter:
    def __init__(self, store: Backend, tries: CIDRTries, device: str, mode: str) -> None:
        self.store = store
        self.tries = tries
        self.device = device
        self.mode = mode
        self.revision = 1
        self._deny: set[Network] = set()
        self._lock = asyncio.Lock()

    @property
    def deny(self) -> list[Network]:
        return sorted(self._deny, key=sort_key)

    def model(self) -> dict[str, Any]:
        """Cilium's ``Prefilter``: the spec, and what the datapath realizes (the same:
        a change returns only once the tries hold it)."""
        spec = PrefilterSpec(self.revision, tuple(self.deny)).to_dict()
        return {"spec": spec, "status": {"realized": spec}}

    async def restore(self) -> None:
        """The persisted list and revision, written into the tries; prefixes the
        tries hold but the list does not (a crash between the two writes) go."""
        raw = await self.store.get(keys.PREFILTER)
        if raw:
            try:
                doc = json.loads(raw)
                revision = int(doc["revision"])
                deny = {parse_cidr(c, keys.PREFILTER) for c in doc["deny"]}
            except Exception as exc:
                raise RuntimeError(f"the persisted prefilter deny list ({keys.PREFILTER}) cannot be read: {exc}; "
                                   f"fix or delete that key") from None
            self.revision, self._deny = revision, deny
        stale = [n for n in await asyncio.to_thread(self.tries.dump) if n not in self._deny]
        await asyncio.to_thread(self._write, self.deny, stale)
        log.info("prefilter.restored", revision=self.revision, cidrs=len(self._deny), stale_removed=len(stale),
                 device=self.device, mode=self.mode)

    def _check_revision(self, revision: int) -> None:
        if revision and revision != self.revision:
            raise Conflict(f"prefilter revision is {self.revision}, not {revision}: "
                           f"list the prefilter again and retry with its current revision")

    def _write(self, add: Iterable[Network], remove: Iterable[Network]) -> None:
        """Insert ``add`` and delete ``remove`` in the tries; on a failure undo
        what was done and raise."""
        added: list[Network] = []
        removed: list[Network] = []
        try:
            for net in add:
                self.tries.insert(net)
                added.append(net)
            for net in remove:
                if self.tries.delete(net):
                    removed.append(net)
        except BaseException:
            for net in added:
                self.tries.delete(net)
            for net in removed:
                self.tries.insert(net)
            raise

    async def _commit(self, new: set[Network], add: list[Network], remove: list[Network]) -> None:
        """Apply the change to completion even if the caller is cancelled (agent
        shutdown): the tries write runs on in its thread regardless, so stopping
        half-way would leave the tries dropping prefixes the list and the record
        do not hold. The lock stays held until the change has landed or been undone."""
        task = asyncio.ensure_future(self._apply(new, add, remove))
        cancelled = False
        while not task.done():
            try:
                await asyncio.shield(task)
            except asyncio.CancelledError:
                if task.cancelled():
                    raise
                cancelled = True
        task.result()
        if cancelled:
            raise asyncio.CancelledError()

    async def _apply(self, new: set[Network], add: list[Network], remove: list[Network]) -> None:
        await asyncio.to_thread(self._write, add, remove)
        doc = json.dumps({"revision": self.revision + 1, "deny": [str(n) for n in sorted(new, key=sort_key)]})
        try:
            await self.store.put(keys.PREFILTER, doc.encode())
        except BaseException:
            await asyncio.to_thread(self._write, remove, add)
            raise
        self._deny = new
        self.revision += 1

    async def insert(self, spec: PrefilterSpec) -> dict[str, Any]:
        """Add ``spec.deny`` (already present prefixes are kept, as Cilium's)."""
        async with self._lock:
            self._check_revision(spec.revision)
            new = self._deny | set(spec.deny)
            for version in (4, 6):
                count = sum(1 for n in new if n.version == version)
                if count > CIDR_MAP_SIZE:
                    raise InsufficientStorage(f"the IPv{version} deny list would hold {count} prefixes, more "
                                              f"than its map holds ({CIDR_MAP_SIZE})")
            await self._commit(new, [n for n in spec.deny if n not in self._deny], [])
            log.info("prefilter.update", revision=self.revision, added=len(spec.deny), first=_head(spec.deny))
            return self.model()

    async def delete(self, spec: PrefilterSpec) -> dict[str, Any]:
        """Remove ``spec.deny``; every prefix must be in the list (else 404, nothing changes)."""
        async with self._lock:
            self._check_revision(spec.revision)
            missing = [str(n) for n in spec.deny if n not in self._deny]
            if missing:
                raise NotFound(f"not in the prefilter deny list: {', '.join(missing[:10])}"
                               + (f" (and {len(missing) - 10} more)" if len(missing) > 10 else ""))
            await self._commit(self._deny - set(spec.deny), [], list(spec.deny))
            log.info("prefilter.delete", revision=self.revision, removed=len(spec.deny), first=_head(spec.deny))
            return self.model()
