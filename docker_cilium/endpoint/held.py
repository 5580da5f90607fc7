"""The identity each endpoint holds, and its resolution in the background.

The Regenerator's half that keeps one record per endpoint of the identity in
its maps and the ipcache (``Held``), says which endpoints still wait for the
identity of their labels (``cilium status``), and runs Cilium's
resolve-identity controller: a retry with backoff per endpoint object, so a
deleted endpoint's retry never stands in for a new one given the same ID.
Kept apart to keep each module small.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog

from docker_cilium.endpoint.model import Endpoint, State
from docker_cilium.identity import reserved
from docker_cilium.identity.allocator import Identity
from docker_cilium.identity.labels import Labels

if TYPE_CHECKING:
    from docker_cilium.endpoint.regenerator import Regenerator

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Held:
    """The identity an endpoint holds: the one in its maps and the ipcache.
    ``referenced`` is False for the number restored from its record while
    allocation has not got through: no allocator reference to release."""

    identity: Identity
    referenced: bool = True


class HeldIdentities:
    """Regenerator's identity record and background resolution."""

    @staticmethod
    def _wanted(ep: Endpoint) -> Labels | None:
        """The label set the endpoint's identity must have; None = reserved:init."""
        return Labels.parse(ep.effective_labels) if ep.labels_known else None

    @staticmethod
    def _is(ident: Identity, wanted: Labels | None) -> bool:
        return ident.id == reserved.INIT if wanted is None else ident.labels == wanted

    def identity_pending(self: Regenerator, ep: Endpoint) -> bool:
        """Its labels are known but it does not hold their allocated identity yet."""
        held = self._held.get(ep.id)
        return held is None or not held.referenced or not self._is(held.identity, self._wanted(ep))

    def pending_report(self: Regenerator) -> dict[str, list[int]]:
        """Endpoints without their real identity, for ``cilium status``: those
        whose labels are known but whose identity is not held yet, and those
        still on reserved:init (labels not known yet). Both pass no traffic but
        what their held identity's policy allows."""
        eps = [ep for _, ep in sorted(self.endpoints.items())
               if ep.state not in (State.DISCONNECTING, State.DISCONNECTED)]
        return {
            "waiting-for-identity": [ep.id for ep in eps if self._wanted(ep) is not None and self.identity_pending(ep)],
            "init": [ep.id for ep in eps if self._wanted(ep) is None],
        }

    def _hold(self: Regenerator, ep: Endpoint, held: Held | None, *, ipcache: bool = True) -> None:
        """Record what ``ep`` holds (None: nothing) and mirror its number in
        ``ep.identity``, the allocator's restored identities (a number without
        a reference of ours) and (unless the caller writes it) the ipcache."""
        self._unhold(ep)
        if held is None:
            ep.identity = reserved.INIT
        else:
            self._held[ep.id] = held
            ep.identity = held.identity.id
            if not held.referenced and not held.identity.is_reserved:
                self.allocator.hold_restored(held.identity)
        if ipcache:
            self.ipcache.upsert_endpoint(ep.id, (ep.ipv4, ep.ipv6), ep.identity)

    def _unhold(self: Regenerator, ep: Endpoint) -> None:
        """Forget what ``ep`` holds (its references are the caller's to release)."""
        before = self._held.pop(ep.id, None)
        if before is not None and not before.referenced and not before.identity.is_reserved:
            self.allocator.drop_restored(before.identity)

    def _schedule_retry(self: Regenerator, ep: Endpoint, *, now: bool = False) -> None:
        """Resolve ``ep``'s identity in the background (first attempt after a
        backoff, or at once with ``now``), unless a task for it already runs."""
        running = self._resolvers.get(ep.id)
        if running is not None and running[0] is ep and not running[1].done():
            return
        task = asyncio.get_running_loop().create_task(self._retry_identity(ep, now), name=f"resolve-identity-{ep.id}")
        self._resolvers[ep.id] = (ep, task)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def wait_for_identity(self: Regenerator, ep: Endpoint, timeout: float) -> bool:
        """Wait until ``ep`` holds the identity of its labels (Cilium's
        Endpoint.WaitForIdentity); False if it still does not after ``timeout`` s."""
        running = self._resolvers.get(ep.id)
        if running is not None and running[0] is ep and not running[1].done():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(running[1]), timeout)
        return not self.identity_pending(ep)

    async def _retry_identity(self: Regenerator, ep: Endpoint, now: bool = False) -> None:
        """Cilium's resolve-identity controller: retry with backoff until the
        endpoint holds the identity of its labels or is gone."""
        delay = self.retry_base
        attempt = 0
        try:
            while self.endpoints.get(ep.id) is ep and self.identity_pending(ep):
                if attempt or not now:
                    await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                attempt += 1
                try:
                    await self._resolve_identity(ep)
                except Exception as exc:
                    log.warning("endpoint.identity_retry_failed", endpoint=ep.id, attempt=attempt,
                                retry_in_s=round(min(delay * 2, self.retry_max), 2), error=str(exc))
                    delay = min(delay * 2, self.retry_max)
        finally:
            running = self._resolvers.get(ep.id)
            if running is not None and running[1] is asyncio.current_task():
                del self._resolvers[ep.id]
