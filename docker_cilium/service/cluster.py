"""Cluster-wide services in the cluster store (Cilium 1.x's kvstore-backed global service IDs).

With a cluster store (``--kvstore etcd``) a service is one persistent record
``<prefix>id/<ID>`` (frontend and backends; not on a lease: a service outlives
the agent that made it) and a frontend claim ``<prefix>frontend/<IP:port/proto>``
-> ID, so one frontend has one ID cluster-wide and one ID one frontend. Both
are taken with ``create_only``; two agents creating at once never share an ID
(the loser of an ID moves on to the next one, or gets 409 for an ID it asked for).

The ID record is the truth: a frontend claim whose ID record is missing or
names another frontend (an agent died between the two writes) is stale and
taken over with compare-and-swap. An agent that took over a claim another
agent was still about to use re-reads the claim after writing its record
and withdraws the record when the claim is no longer its own.

As in Cilium (``pkg/service`` AcquireID): ID 0 asks for one (the frontend's
own if it has one, else the next after the highest in use, wrapping to the
lowest free), an ID given is taken if free or already the frontend's, and an
ID another frontend holds is a conflict (the frontend of an ID is fixed:
delete and re-create to move it).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from typing import Any

from docker_cilium.datapath.maps.lbmap import L4Addr
from docker_cilium.errors import BadRequest, Conflict
from docker_cilium.kvstore import keys
from docker_cilium.kvstore.backend import Backend

from .model import MAX_SERVICE_ID, Service, format_addr, parse_spec

#: Tries of one change against concurrent writers before giving up (409).
ATTEMPTS = 64
#: how long a frontend claim whose record is missing may be another agent's
#: creation in flight (it claims, then writes the record) before it counts as stale
STALE_GRACE_S = 0.5


def frontend_name(fe: L4Addr) -> str:
    """``10.96.0.10:80/TCP``, ``[fd00::10]:53/UDP``: the frontend claim's key (the CLI's Frontend column)."""
    return f"{format_addr(fe)}/{fe.protocol}"


def encode(svc: Service) -> bytes:
    return json.dumps({"id": svc.id, "frontend": vars(svc.frontend),
                       "backends": [vars(b) for b in svc.backends]}, sort_keys=True).encode()


def decode(raw: bytes) -> Service:
    """A record back into a Service; ValueError if it is not one."""
    try:
        doc: dict[str, Any] = json.loads(raw)
        fe = L4Addr(str(doc["frontend"]["ip"]), int(doc["frontend"]["port"]), str(doc["frontend"]["protocol"]))
        backends = tuple(L4Addr(str(b["ip"]), int(b["port"]), fe.protocol) for b in doc["backends"])
        svc_id = int(doc["id"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"not a service record: {exc}") from exc
    if not 1 <= svc_id <= MAX_SERVICE_ID:
        raise ValueError(f"service ID {svc_id} out of range")
    try:  # anyone with the store's credentials wrote it: the API's rules, or it never reaches the maps
        return parse_spec(Service(svc_id, fe, backends).spec(), svc_id)
    except BadRequest as exc:
        raise ValueError(f"not a valid service: {exc}") from exc


def next_id(used: set[int]) -> int:
    """The ID after the highest in ``used``, else (the top one used) the lowest free."""
    top = max(used, default=0)
    if top < MAX_SERVICE_ID:
        return top + 1
    for svc_id in range(1, MAX_SERVICE_ID + 1):
        if svc_id not in used:
            return svc_id
    raise Conflict(f"no service ID left: all {MAX_SERVICE_ID} are in use")


class ClusterServices:
    """The services' records and ID/frontend claims in the cluster store."""

    def __init__(self, backend: Backend, *, prefix: str = keys.GLOBAL_SERVICES) -> None:
        self.backend = backend
        self.ids = prefix + "id/"
        self.frontends = prefix + "frontend/"

    async def upsert(self, svc: Service) -> tuple[Service, bool, bytes | None]:
        """Store ``svc`` (``svc.id`` 0: allocate). Returns the stored service, whether it
        was created and the record it replaced (for :meth:`revert`)."""
        for _ in range(ATTEMPTS):
            done = await self._try_upsert(svc)
            if done is not None:
                return done
        raise Conflict(f"service {frontend_name(svc.frontend)}: {ATTEMPTS} concurrent changes in a row, try again")

    async def _try_upsert(self, svc: Service) -> tuple[Service, bool, bytes | None] | None:
        fe_key = self.frontends + frontend_name(svc.frontend)
        claim = await self.backend.get(fe_key)
        holder = await self._holder(claim, svc.frontend)
        if claim is not None and holder is None:
            # No record for the claim yet may be an agent between its claim and its
            # record: judged stale only if still so after the grace, else two IDs
            # could end up with one frontend.
            await asyncio.sleep(STALE_GRACE_S)
            if await self.backend.get(fe_key) != claim or await self._holder(claim, svc.frontend) is not None:
                return None  # it moved on or became real: look again
        if holder is not None and svc.id not in (0, holder):
            raise Conflict(f"frontend {frontend_name(svc.frontend)} is service {holder}'s")
        want = holder or svc.id
        if want:
            old_raw = await self.backend.get(self.ids + str(want))
            if old_raw is not None:
                old = self._decode_or_conflict(want, old_raw)
                if old.frontend != svc.frontend:
                    raise Conflict(f"service ID {want} is registered to frontend {frontend_name(old.frontend)}: "
                                   "choose another ID (or none to get one)")
                new = replace(svc, id=want)
                if await self.backend.compare_and_swap(self.ids + str(want), old_raw, encode(new)):
                    return new, False, old_raw
                return None
        else:
            want = await self._next_free()
        new = replace(svc, id=want)
        if not await self._claim(fe_key, claim, want):
            return None  # someone else claimed the frontend meanwhile: look again
        if await self.backend.create_only(self.ids + str(want), encode(new)):
            if await self.backend.get(fe_key) == str(want).encode():
                return new, True, None
            await self.backend.compare_and_delete(self.ids + str(want), encode(new))  # lost the claim
            return None
        # The ID was taken since we looked: the next try allocates another one, or
        # (an ID asked for) names its frontend in a 409.
        await self.backend.compare_and_delete(fe_key, str(want).encode())
        return None

    def _decode_or_conflict(self, svc_id: int, raw: bytes) -> Service:
        try:
            return decode(raw)
        except ValueError as exc:
            raise Conflict(f"service ID {svc_id} holds an unreadable record ({exc}): "
                           f"delete it (cilium service delete {svc_id})") from None

    async def _holder(self, claim: bytes | None, fe: L4Addr) -> int | None:
        """The ID a frontend claim names if that ID's record has the frontend (else: stale)."""
        if claim is None:
            return None
        try:
            svc_id = int(claim)
        except ValueError:
            return None
        raw = await self.backend.get(self.ids + str(svc_id))
        try:
            return svc_id if raw is not None and decode(raw).frontend == fe else None
        except ValueError:
            return None

    async def _claim(self, fe_key: str, stale: bytes | None, svc_id: int) -> bool:
        value = str(svc_id).encode()
        if stale is None:
            return await self.backend.create_only(fe_key, value)
        return await self.backend.compare_and_swap(fe_key, stale, value)

    async def _next_free(self) -> int:
        names = [k[len(self.ids):] for k in await self.backend.get_prefix(self.ids)]
        return next_id({int(n) for n in names if n.isdigit()})

    async def delete(self, svc_id: int) -> Service | None:
        """Remove service ``svc_id`` and its frontend claim; the service it was, None if none."""
        for _ in range(ATTEMPTS):
            raw = await self.backend.get(self.ids + str(svc_id))
            if raw is None:
                return None
            if not await self.backend.compare_and_delete(self.ids + str(svc_id), raw):
                continue
            try:
                svc = decode(raw)
            except ValueError:
                return Service(svc_id, L4Addr("0.0.0.0", 0), ())  # an unreadable record is gone too
            await self.backend.compare_and_delete(self.frontends + frontend_name(svc.frontend),
                                                  str(svc_id).encode())
            return svc
        raise Conflict(f"service {svc_id}: {ATTEMPTS} concurrent changes in a row, try again")

    async def revert(self, stored: Service, created: bool, previous: bytes | None) -> None:
        """Undo an :meth:`upsert` (this node's maps refused it), unless changed since."""
        key = self.ids + str(stored.id)
        if created:
            if await self.backend.compare_and_delete(key, encode(stored)):
                await self.backend.compare_and_delete(self.frontends + frontend_name(stored.frontend),
                                                      str(stored.id).encode())
        elif previous is not None:
            await self.backend.compare_and_swap(key, encode(stored), previous)
