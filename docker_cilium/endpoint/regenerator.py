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
import time
from typing import Any, Mapping

import structlog

from docker_cilium.datapath.maps.lxcmap import EndpointInfo
from docker_cilium.datapath.maps.policymap import PolicyEntry as MapPolicyEntry
from docker_cilium.endpoint.datapath import EndpointDatapath, EndpointMaps
from docker_cilium.endpoint.held import Held, HeldIdentities
from docker_cilium.endpoint.redirects import ProxyGlue
from docker_cilium.endpoint.model import Endpoint, State
from docker_cilium.endpoint.timing import RegenerationObserver, timed_regeneration
from docker_cilium.identity import reserved
from docker_cilium.identity.allocator import Identity, IdentityAllocator
from docker_cilium.identity.cache import IdentityCache
from docker_cilium.identity.labels import Labels
from docker_cilium.ipcache import IPCache
from docker_cilium.monitor.notify import (AGENT_ENDPOINT_CREATED, AGENT_ENDPOINT_DELETED, AGENT_ENDPOINT_REGENERATE_FAIL,
                                          AGENT_ENDPOINT_REGENERATED, AgentNotifier, NoNotifier)
from docker_cilium.policy import EndpointPolicy, resolve
from docker_cilium.policy.manager import Commit, PolicyManager, PolicyState
from docker_cilium.policy.turns import Turns
from docker_cilium.proxy.redirect import EndpointAddr, ProxyRedirects

log = structlog.get_logger(__name__)

#: Identity allocation retry (KV store unreachable...): first retry after
#: RETRY_BASE_S, doubling up to RETRY_MAX_S, with +-20% jitter.
RETRY_BASE_S = 0.25
RETRY_MAX_S = 10.0
INIT_IDENTITY = Identity(reserved.INIT, reserved.labels_for(reserved.INIT))  # type: ignore[arg-type]


def _map_entries(pol: EndpointPolicy) -> list[MapPolicyEntry]:
    return [MapPolicyEntry(identity=e.identity, direction=e.direction, dport=e.port, proto=e.proto,
                           proxy_port=e.proxy_port) for e in pol.entries]


def _addr(ep: Endpoint) -> EndpointAddr:
    return EndpointAddr(ep.id, ep.identity, ep.ipv4, ep.ipv6)


def _ep_message(ep: Endpoint) -> dict[str, Any]:
    """Cilium's EndpointNotification fields (id, labels) plus the identity."""
    return {"id": ep.id, "labels": ep.effective_labels, "identity": ep.identity,
            "container-name": ep.container_name}


class Regenerator(HeldIdentities):
    """The endpoint manager's DatapathHooks; regenerates on policy and identity changes.

    It subscribes to ``policy`` and ``allocator`` here, so constructing it is
    all the wiring there is. ``datapath`` is None when the agent runs without BPF.
    ``proxy`` gets the endpoints' L7 redirects (None: L7 proxy disabled, and
    an endpoint whose policy has L7 rules fails its regeneration).
    """

    def __init__(self, policy: PolicyManager, allocator: IdentityAllocator, identities: IdentityCache,
                 ipcache: IPCache, datapath: EndpointDatapath | None, *,
                 retry_base: float = RETRY_BASE_S, retry_max: float = RETRY_MAX_S,
                 observer: RegenerationObserver | None = None,
                 monitor: AgentNotifier | None = None, proxy: ProxyRedirects | None = None) -> None:
        self.policy = policy
        self.proxy = ProxyGlue(proxy)
        self.monitor: AgentNotifier = monitor or NoNotifier()
        self.allocator = allocator
        self.identities = identities
        self.ipcache = ipcache
        self.dp = datapath
        self.observer = observer
        self.endpoints: dict[int, Endpoint] = {}
        # The one record of what each endpoint holds (``ep.identity`` mirrors
        # its number for the endpoint's record and model; only _hold sets both).
        self._held: dict[int, Held] = {}
        # Identity resolution in the background, per live endpoint (the
        # Endpoint object, so a re-created endpoint with the same ID never
        # waits on the deleted one's task); _tasks has every such task, for close.
        self._resolvers: dict[int, tuple[Endpoint, asyncio.Task[None]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
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
        for task in [self._pending, *self._tasks]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._resolvers.clear()
        self._tasks.clear()

    async def apply_policy(self, change: PolicyState, commit: Commit) -> None:
        """Rules or the enforcement mode change: every endpoint, now, all or nothing.

        Every endpoint's new policy is resolved first (a snapshot: the rules
        and identities of ``change``), then refused as a whole if one would
        not fit its policy map, before any map is touched. Then each endpoint
        is written (each write is itself all or nothing) and ``commit`` makes
        the change the repository's; if a write or the commit fails, the
        endpoints already written get their previous entries back."""
        async with self._lock:
            t0 = time.perf_counter()
            await self._follow_moved_identities()
            eps = [ep for ep in self.endpoints.values() if ep.state not in (State.DISCONNECTING, State.DISCONNECTED)]
            pols = await self._resolve_all(eps, change)
            t1 = time.perf_counter()
            if self.dp is None:
                await commit()
            else:
                await self._write_all(eps, pols, commit)
            log.info("policy.applied", endpoints=len(eps), resolve_ms=round((t1 - t0) * 1000, 2),
                     write_commit_ms=round((time.perf_counter() - t1) * 1000, 2))
            for ep in eps:
                self._regenerated(ep, pols[ep.id])
                if self.observer is not None:  # each endpoint waited for the whole batch
                    self.observer.endpoint_regenerated(time.perf_counter() - t0, True)
            self._mark_waiting()

    async def _resolve_all(self, eps: list[Endpoint], state: PolicyState) -> dict[int, EndpointPolicy]:
        """Each endpoint's policy under ``state``; endpoints with the same labels
        and mode share one resolution. The loop gets turns meanwhile."""
        turns = Turns()
        by_key: dict[tuple[frozenset[str], str], EndpointPolicy] = {}
        out: dict[int, EndpointPolicy] = {}
        for ep in eps:
            labels, mode = self.policy_subject(ep, state)
            key = (frozenset(labels), state.mode_for(mode))
            if key not in by_key:
                by_key[key] = await turns.drive(state.resolve_steps(labels, state.identities, mode))
            out[ep.id] = by_key[key]
        return out

    def _prepare_writes(self, eps: list[Endpoint], pols: dict[int, EndpointPolicy]) -> tuple[
            dict[int, list[MapPolicyEntry]], dict[int, list[MapPolicyEntry]]]:
        """Runs in a worker thread (tens of thousands of entries): every
        endpoint's new map entries, refused as a whole if one does not fit
        (PolicyMapFull names the endpoint and the limit), and its current ones."""
        maps = self._maps()
        by_pol: dict[int, list[MapPolicyEntry]] = {}
        wanted = {ep.id: by_pol.setdefault(id(pols[ep.id]), _map_entries(pols[ep.id])) for ep in eps}
        maps.policy.check_fits(wanted)
        return wanted, {ep.id: maps.policy.endpoint_entries(ep.id) for ep in eps}

    async def _write_all(self, eps: list[Endpoint], pols: dict[int, EndpointPolicy], commit: Commit) -> None:
        wanted, entries_before = await asyncio.to_thread(self._prepare_writes, eps, pols)
        before = {ep.id: (entries_before[ep.id], ep.ingress_enforced, ep.egress_enforced) for ep in eps}
        redirects_before = {ep.id: self.proxy.applied.get(ep.id, {}) for ep in eps}
        written: list[Endpoint] = []
        try:
            for ep in eps:
                written.append(ep)
                entries = await self.proxy.entries(_addr(ep), pols[ep.id], wanted[ep.id])
                await asyncio.to_thread(self._write_endpoint_maps, ep, entries,
                                        pols[ep.id].ingress_enforced, pols[ep.id].egress_enforced)
            await commit()
        except BaseException as exc:
            log.warning("policy.rolled_back", endpoints=len(written), error=str(exc))
            for ep in reversed(written):
                entries, *flags = before[ep.id]
                entries = await self.proxy.restore(_addr(ep), redirects_before[ep.id], entries)
                await asyncio.to_thread(self._write_endpoint_maps, ep, entries, *flags)
            raise

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
        old = self._held.get(ep.id)
        old_num = ep.identity
        ips = (ep.ipv4, ep.ipv6)
        self._hold(ep, Held(new))
        try:
            await self._regenerate(ep, self.identities.identity_labels())
        except BaseException as exc:
            log.warning("endpoint.identity_switch_failed", endpoint=ep.id, old=old_num, new=new.id, error=str(exc))
            self._hold(ep, old)
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
        if old is not None and old.referenced:
            await self._release(old.identity)
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
            held = self._held.get(ep.id)
            if self.endpoints.get(ep.id) is not ep or not self._is(new, self._wanted(ep)):
                await self._release(new)  # deleted, or relabelled: that change resolves on its own
            elif held is not None and held.identity == new:
                if held.referenced:
                    await self._release(new)  # a concurrent attempt got there first
                else:
                    # The restored number is still its labels': the reference
                    # just taken becomes the held one; maps and peers already
                    # carry the number.
                    self._hold(ep, Held(new), ipcache=False)
                if ep.state == State.WAITING_FOR_IDENTITY:
                    await self._regenerate(ep, self.identities.identity_labels())
            else:
                await self._switch_identity(ep, new)

    # ---- endpoint hooks (DatapathHooks) ---------------------------------------

    async def endpoint_created(self, ep: Endpoint) -> None:
        """A new endpoint holds reserved:init (labels unknown), whose policy
        denies everything a rule does not allow: it passes no traffic before
        its programs are attached. A restored one keeps the number its record
        (and its maps from before the restart) carry and allocates it again in
        the background: a store that is down stalls neither restore nor the
        other endpoints (nothing is allocated under the lock)."""
        t0 = time.perf_counter()
        self.monitor.agent_event(AGENT_ENDPOINT_CREATED, _ep_message(ep))
        async with self._lock:
            self.endpoints[ep.id] = ep
            if ep.state not in (State.WAITING_FOR_IDENTITY, State.RESTORING):
                ep.set_state(State.WAITING_FOR_IDENTITY, "allocating identity")
            wanted = self._wanted(ep)
            if wanted is None or ep.identity == reserved.INIT:
                self._hold(ep, Held(INIT_IDENTITY, referenced=wanted is None))
            else:
                self._hold(ep, Held(Identity(ep.identity, wanted), referenced=False))
                self.identities_changed()  # peers restored before it may select its number
            ep.set_state(State.WAITING_TO_REGENERATE,
                         "restored identity" if wanted is not None else "holding reserved:init")
            await self._regenerate(ep, self.identities.identity_labels())
            if self.identity_pending(ep):
                ep.set_state(State.WAITING_FOR_IDENTITY, "allocating the identity of its labels")
                self._schedule_retry(ep, now=True)
        if self.dp is not None:
            # Outside the lock (its maps are written): endpoints created
            # together attach side by side, and a policy change meanwhile
            # rewrites maps the programs read once attached.
            await self.dp.attach_async(ep.ifindex)
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
        """Its map entries, ipcache entries, flows and identity reference go.
        ``Endpoint deleted`` is emitted only for an endpoint that was announced
        (a create rolled back before the datapath was told announces nothing)
        and once: a retried delete finds it no longer held."""
        async with self._lock:
            announced = ep.id in self._held
            self.endpoints.pop(ep.id, None)
            running = self._resolvers.get(ep.id)
            if running is not None and running[0] is ep:
                # Not cancelled (a cancel inside the store call would cost a
                # round trip to undo): it sees the endpoint gone and stops.
                del self._resolvers[ep.id]
            held = self._held.get(ep.id)
            ips = [ip for ip in (ep.ipv4, ep.ipv6) if ip]
            if self.dp is not None:
                maps = self._maps()
                maps.endpoints.delete(ep.ifindex, ep.ipv4, ep.ipv6)
                maps.policy.delete_endpoint(ep.id)
                maps.ct_budget.reset(ep.id)  # ids are reused: the next one starts afresh
            self.ipcache.delete_endpoint(ep.id, ips)
            if self.dp is not None:
                # A later container on the same address must not inherit these
                # flows (and skip policy through them).
                await asyncio.to_thread(self._maps().ct.flush_addresses, *ips)
            # Forgotten only once released: a retry after a failed step above
            # (DeleteEndpoint runs again) still holds the reference to drop.
            if held is not None and held.referenced:
                await self._release(held.identity)
            self._unhold(ep)
            try:
                await self.proxy.remove(ep.id)
            except Exception as exc:
                log.error("proxy.remove_endpoint_failed", endpoint=ep.id, error=str(exc))
        if announced:
            self.monitor.agent_event(AGENT_ENDPOINT_DELETED, _ep_message(ep))

    async def regenerate(self, ep: Endpoint) -> None:
        """One endpoint's own settings (PolicyEnforcement) changed, or an
        operator asked: its maps from the current policy, its programs attached
        again (attaching is idempotent)."""
        async with self._lock:
            await self._regenerate(ep, self.identities.identity_labels())
            if self.dp is not None and self.endpoints.get(ep.id) is ep:
                await self.dp.attach_async(ep.ifindex)
            self._mark_waiting()

    # ---- regeneration -----------------------------------------------------------

    def policy_subject(self, ep: Endpoint, state: PolicyState) -> tuple[list[str], str]:
        """Whose policy the endpoint enforces, and in which mode: the identity
        it holds (not labels it is still waiting to get the identity of: the
        maps must agree with its ``sec_identity``). reserved:init is
        default-deny in both directions, beyond what rules selecting it allow,
        unless enforcement is ``never`` (Cilium's computePolicyEnforcementAndRules)."""
        held = self._held[ep.id].identity if ep.id in self._held else INIT_IDENTITY
        if held.id == reserved.INIT:
            never = state.mode_for(ep.policy_enforcement) == "never"
            return [reserved.INIT_LABEL], "never" if never else "always"
        return held.labels.to_strings(), ep.policy_enforcement

    def resolve_endpoint(self, ep: Endpoint, identities: Mapping[int, list[str]]) -> EndpointPolicy:
        state = self.policy.state
        labels, mode = self.policy_subject(ep, state)
        return resolve(state.repo, labels, identities, state.mode_for(mode))

    @timed_regeneration
    async def _regenerate(self, ep: Endpoint, identities: Mapping[int, list[str]]) -> None:
        """One endpoint under the current policy. All or nothing: if its new
        policy does not fit its map (PolicyMapFull names the endpoint and the
        limit), it keeps its previous entries and is not-ready."""
        if not self._begin(ep):
            return
        state = self.policy.state
        labels, mode = self.policy_subject(ep, state)
        pol = await Turns().drive(state.resolve_steps(labels, identities, mode))
        if self.dp is not None:
            try:
                entries = await self.proxy.entries(_addr(ep), pol)
                await asyncio.to_thread(self._write_endpoint_maps, ep, entries,
                                        pol.ingress_enforced, pol.egress_enforced)
            except Exception as exc:
                ep.set_state(State.NOT_READY, f"regeneration failed: {exc}")
                self.monitor.agent_event(AGENT_ENDPOINT_REGENERATE_FAIL, {**_ep_message(ep), "error": str(exc)})
                raise
        self._regenerated(ep, pol)

    @staticmethod
    def _begin(ep: Endpoint) -> bool:
        """Move the endpoint to regenerating; False if it is going away."""
        if ep.state in (State.DISCONNECTING, State.DISCONNECTED):
            return False
        if ep.state == State.READY:
            ep.set_state(State.WAITING_TO_REGENERATE, "policy changed")
        if ep.state != State.REGENERATING:
            if ep.state != State.WAITING_TO_REGENERATE:
                ep.set_state(State.WAITING_TO_REGENERATE, "regeneration requested")
            ep.set_state(State.REGENERATING, "writing datapath maps")
        return True

    def _regenerated(self, ep: Endpoint, pol: EndpointPolicy) -> None:
        if not self._begin(ep):
            return
        ep.ingress_enforced, ep.egress_enforced = pol.ingress_enforced, pol.egress_enforced
        ep.policy_revision = pol.revision
        ep.set_state(State.READY, f"regenerated to policy revision {pol.revision}")
        self.monitor.agent_event(AGENT_ENDPOINT_REGENERATED, {**_ep_message(ep), "revision": pol.revision})
        # Nothing persisted changed here (revision and flags are recomputed on
        # restore): no fsync per endpoint on every policy import.

    def _write_endpoint_maps(self, ep: Endpoint, entries: list[MapPolicyEntry], ingress_enforced: bool,
                             egress_enforced: bool) -> None:
        """Runs in a worker thread: a full policy-map diff is many syscalls.
        The policy write is all or nothing (PolicyMap.set_endpoint_policy)."""
        maps = self._maps()
        maps.policy.set_endpoint_policy(ep.id, entries)
        # Flags last: the endpoint becomes enforced only once its allows are in.
        maps.endpoints.upsert(EndpointInfo(
            ifindex=ep.ifindex, lxc_id=ep.id, sec_identity=ep.identity, mac=ep.mac, node_mac=ep.host_mac,
            ipv4=ep.ipv4, ipv6=ep.ipv6, ingress_enforced=ingress_enforced,
            egress_enforced=egress_enforced))

    async def _follow_moved_identities(self) -> None:
        """Endpoints whose number the allocator replaced (a resync after a lost
        KV session found it given to other labels) take the new one. The record
        needs no write: restore allocates the identity from the labels again."""
        moved: list[tuple[int, tuple[str | None, str | None], int]] = []
        for ep_id, held in list(self._held.items()):
            ep = self.endpoints.get(ep_id)
            cur = self.allocator.current(held.identity)
            if ep is None or held.identity.is_reserved or cur.id == held.identity.id:
                continue
            log.warning("endpoint.identity_moved", endpoint=ep_id, old=held.identity.id, new=cur.id)
            self._hold(ep, Held(cur, held.referenced), ipcache=False)
            moved.append((ep.id, (ep.ipv4, ep.ipv6), cur.id))
        if moved:
            await self.ipcache.upsert_endpoints(moved)  # map writes off the loop

    async def _regenerate_all(self) -> None:
        """Every endpoint under the current policy (identities changed). One
        endpoint that cannot take it keeps its previous policy; the others
        are still regenerated."""
        await self._follow_moved_identities()
        identities = self.identities.identity_labels()
        for ep in list(self.endpoints.values()):
            try:
                await self._regenerate(ep, identities)
            except Exception as exc:
                log.error("endpoint.regenerate_failed", endpoint=ep.id, error=str(exc))

    async def regenerate_all(self) -> None:
        async with self._lock:
            await self._regenerate_all()
            self._mark_waiting()
