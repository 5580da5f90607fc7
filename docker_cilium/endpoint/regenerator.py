"""Endpoint regeneration: labels -> identity -> resolved policy -> BPF maps.

This is where the pure parts meet the kernel. The policy repository and the
resolver know nothing of maps; the datapath knows nothing of rules. On every
change (an endpoint appears, its labels change, a policy is imported or
deleted, the enforcement mode changes, an identity appears anywhere in the
cluster) the affected endpoints are "regenerated": their policy is resolved
against every known identity and the difference is written into the pinned
BPF maps. No clang runs here: the datapath object was compiled once at agent
start and is shared by all endpoints, so regeneration costs map updates only.

Regeneration is synchronous with the API call that caused it, so when
`cilium policy import` returns, every local endpoint already enforces the new
revision; `cilium policy wait` therefore returns at once locally.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from typing import Iterable, Protocol

import structlog

from docker_cilium.datapath.maps.lxcmap import EndpointInfo
from docker_cilium.datapath.maps.policymap import PolicyEntry as MapPolicyEntry
from docker_cilium.endpoint.model import Endpoint, State
from docker_cilium.identity import reserved
from docker_cilium.identity.allocator import Identity, IdentityAllocator
from docker_cilium.identity.cache import IdentityCache
from docker_cilium.identity.labels import Labels
from docker_cilium.ipcache import IPCache
from docker_cilium.policy import EndpointPolicy
from docker_cilium.policy.manager import PolicyManager

log = structlog.get_logger(__name__)

#: Identity allocation retry (KV store unreachable...): first retry after
#: RETRY_BASE_S, doubling up to RETRY_MAX_S, with +-20% jitter.
RETRY_BASE_S = 0.25
RETRY_MAX_S = 10.0
INIT_IDENTITY = Identity(reserved.INIT, reserved.labels_for(reserved.INIT))  # type: ignore[arg-type]


class PolicyMapWriter(Protocol):
    """``cilium_policy``: the per-endpoint allow entries."""

    def set_endpoint_policy(self, lxc_id: int, entries: Iterable[MapPolicyEntry]) -> tuple[int, int]: ...
    def delete_endpoint(self, lxc_id: int) -> int: ...


class EndpointMapWriter(Protocol):
    """``cilium_lxc``: the local endpoints, their identity and enforcement flags."""

    def upsert(self, ep: EndpointInfo) -> None: ...
    def delete(self, ifindex: int, ipv4: str | None = None, ipv6: str | None = None) -> None: ...


class ConntrackFlusher(Protocol):
    def flush_addresses(self, *addrs: str | None) -> int: ...


class EndpointMaps(Protocol):
    @property
    def policy(self) -> PolicyMapWriter: ...
    @property
    def endpoints(self) -> EndpointMapWriter: ...
    @property
    def ct(self) -> ConntrackFlusher: ...


class EndpointDatapath(Protocol):
    """The loaded datapath as regeneration uses it (``loader.Datapath``; a fake in unit tests)."""

    @property
    def maps(self) -> EndpointMaps | None: ...
    async def attach_async(self, ifindex: int) -> float: ...


class Regenerator:
    """The endpoint manager's DatapathHooks; regenerates on policy and identity changes.

    It subscribes to ``policy`` and ``allocator`` here, so constructing it is
    all the wiring there is. ``datapath`` is None when the agent runs without BPF.
    """

    def __init__(self, policy: PolicyManager, allocator: IdentityAllocator, identities: IdentityCache,
                 ipcache: IPCache, datapath: EndpointDatapath | None, *,
                 retry_base: float = RETRY_BASE_S, retry_max: float = RETRY_MAX_S) -> None:
        self.policy = policy
        self.allocator = allocator
        self.identities = identities
        self.ipcache = ipcache
        self.dp = datapath
        self.endpoints: dict[int, Endpoint] = {}
        # The identity each endpoint holds: the one in its maps and the ipcache.
        self._ep_identity: dict[int, Identity] = {}
        # Endpoints whose held identity is the number restored from their record
        # while allocation failed: no allocator reference to release.
        self._unreferenced: set[int] = set()
        self._resolvers: dict[int, asyncio.Task[None]] = {}  # identity retries
        self.retry_base, self.retry_max = retry_base, retry_max
        self._lock = asyncio.Lock()
        self._pending: asyncio.Task[None] | None = None
        self._dirty = False
        policy.subscribe(self)
        allocator.subscribe(self.identities_changed)

    def _maps(self) -> EndpointMaps:
        assert self.dp is not None and self.dp.maps is not None
        return self.dp.maps

    async def close(self) -> None:
        for task in [self._pending, *self._resolvers.values()]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._resolvers.clear()

    async def policy_changed(self) -> None:
        """Rules or the enforcement mode changed: every endpoint, now."""
        await self.regenerate_all()

    def identities_changed(self) -> None:
        """Another node (or we) allocated or freed an identity: re-resolve.

        Bursts are coalesced into one run; a change that arrives while a run is
        in progress marks it dirty, so it is never lost."""
        self._dirty = True
        if self._pending is None or self._pending.done():
            self._pending = asyncio.get_running_loop().create_task(self._delayed_regenerate())

    async def _delayed_regenerate(self, delay: float = 0.1) -> None:
        while self._dirty:
            await asyncio.sleep(delay)
            self._dirty = False
            try:
                await self.regenerate_all()
            except Exception:
                log.exception("regenerate.failed")

    # ---- identity (fail closed until the real one is in the maps) -------------

    @staticmethod
    def _wanted(ep: Endpoint) -> Labels | None:
        """The label set the endpoint's identity must have; None = reserved:init."""
        return Labels.parse(ep.effective_labels) if ep.labels_known else None

    @staticmethod
    def _is(ident: Identity, wanted: Labels | None) -> bool:
        return ident.id == reserved.INIT if wanted is None else ident.labels == wanted

    def identity_pending(self, ep: Endpoint) -> bool:
        """Its labels are known but it does not hold their allocated identity yet."""
        held = self._ep_identity.get(ep.id)
        return held is None or ep.id in self._unreferenced or not self._is(held, self._wanted(ep))

    async def _allocate(self, wanted: Labels | None) -> Identity:
        return INIT_IDENTITY if wanted is None else await self.allocator.allocate(wanted)

    async def _release(self, ident: Identity) -> None:
        """Drop one reference; a store failure is logged: GC or the lease end frees it."""
        if ident.is_reserved:
            return
        try:
            await self.allocator.release(ident)
        except Exception as exc:
            log.warning("identity.release_failed", identity=ident.id, error=str(exc))

    def _mark_waiting(self) -> None:
        """A regeneration moved every endpoint to ready: those still waiting say so."""
        for ep in self.endpoints.values():
            if ep.state not in (State.DISCONNECTING, State.DISCONNECTED) and self.identity_pending(ep):
                ep.set_state(State.WAITING_FOR_IDENTITY, "identity of its labels not allocated yet")

    async def _switch_identity(self, ep: Endpoint, new: Identity) -> None:
        """All or nothing (caller holds the lock and one reference on ``new``):
        the ipcache and the endpoint's maps carry ``new``, or, if writing them
        failed, the old identity again, ``new`` is released and this raises."""
        old = self._ep_identity.get(ep.id)
        old_num, old_unref = ep.identity, ep.id in self._unreferenced
        ips = (ep.ipv4, ep.ipv6)
        self._ep_identity[ep.id], ep.identity = new, new.id
        self._unreferenced.discard(ep.id)
        self.ipcache.upsert_endpoint(ep.id, ips, new.id)
        try:
            await self._regenerate(ep, self.identities.identity_labels())
        except BaseException as exc:
            log.warning("endpoint.identity_switch_failed", endpoint=ep.id, old=old_num, new=new.id, error=str(exc))
            if old is None:
                self._ep_identity.pop(ep.id, None)
            else:
                self._ep_identity[ep.id] = old
            if old_unref:
                self._unreferenced.add(ep.id)
            ep.identity = old_num
            self.ipcache.upsert_endpoint(ep.id, ips, old_num)
            try:
                await self._regenerate(ep, self.identities.identity_labels())
            except Exception as again:  # the maps keep whatever the failed write left: the retry rewrites them
                log.error("endpoint.identity_rollback_failed", endpoint=ep.id, error=str(again))
            await self._release(new)
            ep.set_state(State.WAITING_FOR_IDENTITY, f"identity {new.id} not applied: {exc}")
            raise
        log.info("endpoint.identity", endpoint=ep.id, old=old_num, new=new.id)
        if old_num == reserved.INIT and new.id != reserved.INIT and self.dp is not None:
            # Flows the init identity's policy let open must face the real policy.
            await asyncio.to_thread(self._maps().ct.flush_addresses, *[ip for ip in ips if ip])
        if old is not None and not old_unref:
            await self._release(old)
        try:
            await self._regenerate_all()  # peers' policies may select (or drop) the new identity
        except Exception:
            log.exception("regenerate.failed")
            self.identities_changed()  # retried (coalesced)
        self._mark_waiting()

    async def _resolve_identity(self, ep: Endpoint) -> None:
        """One attempt: allocate the identity of the endpoint's labels (outside
        the lock: a store that is down must not stall other endpoints), then
        switch to it. Raises when allocation or the switch failed."""
        wanted = self._wanted(ep)
        new = await self._allocate(wanted)
        async with self._lock:
            held = self._ep_identity.get(ep.id)
            if self.endpoints.get(ep.id) is not ep or not self._is(new, self._wanted(ep)):
                await self._release(new)  # deleted, or relabelled: that change resolves on its own
            elif held is not None and held.id == new.id and ep.id not in self._unreferenced \
                    and held.labels == new.labels:
                await self._release(new)  # a concurrent attempt got there first
                if ep.state == State.WAITING_FOR_IDENTITY:
                    await self._regenerate(ep, self.identities.identity_labels())
            else:
                await self._switch_identity(ep, new)

    def _schedule_retry(self, ep: Endpoint) -> None:
        task = self._resolvers.get(ep.id)
        if task is None or task.done():
            self._resolvers[ep.id] = asyncio.get_running_loop().create_task(
                self._retry_identity(ep), name=f"resolve-identity-{ep.id}")

    async def _retry_identity(self, ep: Endpoint) -> None:
        """Cilium's resolve-identity controller: retry with backoff until the
        endpoint holds the identity of its labels or is gone."""
        delay = self.retry_base
        attempt = 0
        try:
            while self.endpoints.get(ep.id) is ep and self.identity_pending(ep):
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                attempt += 1
                try:
                    await self._resolve_identity(ep)
                except Exception as exc:
                    log.warning("endpoint.identity_retry_failed", endpoint=ep.id, attempt=attempt,
                                retry_in_s=round(min(delay * 2, self.retry_max), 2), error=str(exc))
                    delay = min(delay * 2, self.retry_max)
        finally:
            if self._resolvers.get(ep.id) is asyncio.current_task():
                del self._resolvers[ep.id]

    # ---- endpoint hooks (DatapathHooks) ---------------------------------------

    async def endpoint_created(self, ep: Endpoint) -> None:
        """A new endpoint holds reserved:init (labels unknown), whose policy
        denies everything a rule does not allow: it passes no traffic before
        its programs are attached. A restored one allocates again; if that
        fails it keeps the number its record has (as its maps from before the
        restart do) and retries in the background."""
        t0 = time.perf_counter()
        retry = False
        async with self._lock:
            self.endpoints[ep.id] = ep
            if ep.state not in (State.WAITING_FOR_IDENTITY, State.RESTORING):
                ep.set_state(State.WAITING_FOR_IDENTITY, "allocating identity")
            wanted = self._wanted(ep)
            try:
                held = await self._allocate(wanted)
            except Exception as exc:
                assert wanted is not None
                log.warning("endpoint.identity_pending", endpoint=ep.id, error=str(exc))
                held = INIT_IDENTITY if ep.identity == reserved.INIT else Identity(ep.identity, wanted)
                self._unreferenced.add(ep.id)
                retry = True
            self._ep_identity[ep.id] = held
            ep.identity = held.id
            self.ipcache.upsert_endpoint(ep.id, (ep.ipv4, ep.ipv6), ep.identity)
            ep.set_state(State.WAITING_TO_REGENERATE, "identity resolved" if not retry else "restored identity")
            await self._regenerate(ep, self.identities.identity_labels())
            if self.dp is not None:
                await self.dp.attach_async(ep.ifindex)
            if retry:
                ep.set_state(State.WAITING_FOR_IDENTITY, "identity allocation failed; retrying")
                self._schedule_retry(ep)
        log.debug("endpoint.regenerated", endpoint=ep.id, identity=ep.identity,
                  duration_ms=round((time.perf_counter() - t0) * 1000, 2))

    async def endpoint_changed(self, ep: Endpoint) -> None:
        """Labels changed: switch to their identity, then every endpoint is re-evaluated.

        If allocation or the switch fails, the endpoint keeps the identity it
        holds (reserved:init, fail closed, for a new container), shows
        ``waiting-for-identity``, and the allocation is retried with backoff:
        the labels are never dropped."""
        t0 = time.perf_counter()
        if ep.id not in self.endpoints:
            return
        if not self.identity_pending(ep):
            if ep.state != State.READY:
                async with self._lock:
                    await self._regenerate(ep, self.identities.identity_labels())
            return
        if ep.state not in (State.DISCONNECTING, State.DISCONNECTED):
            ep.set_state(State.WAITING_FOR_IDENTITY, "resolving identity of its labels")
        try:
            await self._resolve_identity(ep)
        except Exception as exc:
            log.warning("endpoint.identity_pending", endpoint=ep.id, error=str(exc))
            if ep.state not in (State.DISCONNECTING, State.DISCONNECTED):
                ep.set_state(State.WAITING_FOR_IDENTITY, f"identity allocation failed, retrying: {exc}")
            self._schedule_retry(ep)
        log.debug("endpoint.labels_applied", endpoint=ep.id, identity=ep.identity,
                  duration_ms=round((time.perf_counter() - t0) * 1000, 2))

    async def endpoint_deleted(self, ep: Endpoint) -> None:
        async with self._lock:
            self.endpoints.pop(ep.id, None)
            ident = self._ep_identity.pop(ep.id, None)
            if ep.id in self._unreferenced:
                self._unreferenced.discard(ep.id)
                ident = None  # a restored number: no reference of ours
            ips = [ip for ip in (ep.ipv4, ep.ipv6) if ip]
            if self.dp is not None:
                maps = self._maps()
                maps.endpoints.delete(ep.ifindex, ep.ipv4, ep.ipv6)
                maps.policy.delete_endpoint(ep.id)
            self.ipcache.delete_endpoint(ep.id, ips)
            if self.dp is not None:
                # A later container on the same address must not inherit these
                # flows (and skip policy through them).
                await asyncio.to_thread(self._maps().ct.flush_addresses, *ips)
            if ident is not None:
                await self._release(ident)

    async def regenerate(self, ep: Endpoint) -> None:
        """One endpoint's own settings (PolicyEnforcement) changed."""
        async with self._lock:
            await self._regenerate(ep, self.identities.identity_labels())
            self._mark_waiting()

    # ---- regeneration -----------------------------------------------------------

    def resolve_endpoint(self, ep: Endpoint, identities: dict[int, list[str]]) -> EndpointPolicy:
        """The policy of the identity the endpoint holds (not of labels it is
        still waiting to get the identity of: the maps must agree).

        reserved:init is default-deny in both directions, beyond what rules
        selecting it allow, unless enforcement is ``never`` (Cilium's
        computePolicyEnforcementAndRules)."""
        held = self._ep_identity.get(ep.id, INIT_IDENTITY)
        if held.id == reserved.INIT:
            never = self.policy.mode_for(ep.policy_enforcement) == "never"
            return self.policy.resolve([reserved.INIT_LABEL], identities, "never" if never else "always")
        return self.policy.resolve(held.labels.to_strings(), identities, ep.policy_enforcement)

    async def _regenerate(self, ep: Endpoint, identities: dict[int, list[str]]) -> None:
        if ep.state in (State.DISCONNECTING, State.DISCONNECTED):
            return
        if ep.state == State.READY:
            ep.set_state(State.WAITING_TO_REGENERATE, "policy changed")
        if ep.state != State.REGENERATING:
            if ep.state != State.WAITING_TO_REGENERATE:
                ep.set_state(State.WAITING_TO_REGENERATE, "regeneration requested")
            ep.set_state(State.REGENERATING, "writing datapath maps")
        pol = self.resolve_endpoint(ep, identities)
        if self.dp is not None:
            await asyncio.to_thread(self._write_endpoint_maps, ep, pol)
        ep.ingress_enforced, ep.egress_enforced = pol.ingress_enforced, pol.egress_enforced
        ep.policy_revision = pol.revision
        ep.set_state(State.READY, f"regenerated to policy revision {pol.revision}")
        # Nothing persisted changed here (revision and flags are recomputed on
        # restore): no fsync per endpoint on every policy import.

    def _write_endpoint_maps(self, ep: Endpoint, pol: EndpointPolicy) -> None:
        """Runs in a worker thread: a full policy-map diff is many syscalls."""
        maps = self._maps()
        maps.policy.set_endpoint_policy(ep.id, [
            MapPolicyEntry(identity=e.identity, direction=e.direction, dport=e.port, proto=e.proto,
                           proxy_port=e.proxy_port)
            for e in pol.entries
        ])
        # Flags last: the endpoint becomes enforced only once its allows are in.
        maps.endpoints.upsert(EndpointInfo(
            ifindex=ep.ifindex, lxc_id=ep.id, sec_identity=ep.identity, mac=ep.mac, node_mac=ep.host_mac,
            ipv4=ep.ipv4, ipv6=ep.ipv6, ingress_enforced=pol.ingress_enforced,
            egress_enforced=pol.egress_enforced))

    def _follow_moved_identities(self) -> None:
        """Endpoints whose number the allocator replaced (a resync after a lost
        KV session found it given to other labels) take the new one. The record
        needs no write: restore allocates the identity from the labels again."""
        for ep_id, ident in list(self._ep_identity.items()):
            ep = self.endpoints.get(ep_id)
            cur = self.allocator.current(ident)
            if ep is None or ident.is_reserved or cur.id == ident.id:
                continue
            log.warning("endpoint.identity_moved", endpoint=ep_id, old=ident.id, new=cur.id)
            self._ep_identity[ep_id] = cur
            ep.identity = cur.id
            self.ipcache.upsert_endpoint(ep.id, (ep.ipv4, ep.ipv6), ep.identity)

    async def _regenerate_all(self) -> None:
        self._follow_moved_identities()
        identities = self.identities.identity_labels()
        for ep in list(self.endpoints.values()):
            await self._regenerate(ep, identities)

    async def regenerate_all(self) -> None:
        async with self._lock:
            await self._regenerate_all()
            self._mark_waiting()
