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
from typing import Iterable, Mapping, Protocol

import structlog

from docker_cilium.datapath.maps.lxcmap import EndpointInfo
from docker_cilium.datapath.maps.policymap import PolicyEntry as MapPolicyEntry
from docker_cilium.endpoint.model import Endpoint, State
from docker_cilium.identity import reserved
from docker_cilium.identity.allocator import Identity, IdentityAllocator
from docker_cilium.identity.cache import IdentityCache
from docker_cilium.identity.labels import Labels
from docker_cilium.ipcache import IPCache
from docker_cilium.policy import EndpointPolicy, resolve
from docker_cilium.policy.manager import Commit, PolicyManager, PolicyState
from docker_cilium.policy.turns import Turns

log = structlog.get_logger(__name__)


class PolicyMapWriter(Protocol):
    """``cilium_policy``: the per-endpoint allow entries."""

    def set_endpoint_policy(self, lxc_id: int, entries: Iterable[MapPolicyEntry]) -> tuple[int, int]: ...
    def delete_endpoint(self, lxc_id: int) -> int: ...
    def endpoint_entries(self, lxc_id: int) -> list[MapPolicyEntry]: ...
    def check_fits(self, changes: Mapping[int, Iterable[MapPolicyEntry]]) -> None: ...


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


def _map_entries(pol: EndpointPolicy) -> list[MapPolicyEntry]:
    return [MapPolicyEntry(identity=e.identity, direction=e.direction, dport=e.port, proto=e.proto,
                           proxy_port=e.proxy_port) for e in pol.entries]


class Regenerator:
    """The endpoint manager's DatapathHooks; regenerates on policy and identity changes.

    It subscribes to ``policy`` and ``allocator`` here, so constructing it is
    all the wiring there is. ``datapath`` is None when the agent runs without BPF.
    """

    def __init__(self, policy: PolicyManager, allocator: IdentityAllocator, identities: IdentityCache,
                 ipcache: IPCache, datapath: EndpointDatapath | None) -> None:
        self.policy = policy
        self.allocator = allocator
        self.identities = identities
        self.ipcache = ipcache
        self.dp = datapath
        self.endpoints: dict[int, Endpoint] = {}
        self._ep_identity: dict[int, Identity] = {}
        self._lock = asyncio.Lock()
        self._pending: asyncio.Task[None] | None = None
        self._dirty = False
        policy.subscribe(self)
        allocator.subscribe(self.identities_changed)

    def _maps(self) -> EndpointMaps:
        assert self.dp is not None and self.dp.maps is not None
        return self.dp.maps

    async def close(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._pending

    async def apply_policy(self, change: PolicyState, commit: Commit) -> None:
        """Rules or the enforcement mode change: every endpoint, now, all or nothing.

        Every endpoint's new policy is resolved first (a snapshot: the rules
        and identities of ``change``), then refused as a whole if one would
        not fit its policy map, before any map is touched. Then each endpoint
        is written (each write is itself all or nothing) and ``commit`` makes
        the change the repository's; if a write or the commit fails, the
        endpoints already written get their previous entries back."""
        async with self._lock:
            self._follow_moved_identities()
            eps = [ep for ep in self.endpoints.values() if ep.state not in (State.DISCONNECTING, State.DISCONNECTED)]
            pols = await self._resolve_all(eps, change)
            if self.dp is None:
                await commit()
            else:
                await self._write_all(eps, pols, commit)
            for ep in eps:
                self._regenerated(ep, pols[ep.id])

    async def _resolve_all(self, eps: list[Endpoint], state: PolicyState) -> dict[int, EndpointPolicy]:
        """Each endpoint's policy under ``state``; endpoints with the same labels
        and mode share one resolution. The loop gets turns meanwhile."""
        turns = Turns()
        by_key: dict[tuple[frozenset[str], str], EndpointPolicy] = {}
        out: dict[int, EndpointPolicy] = {}
        for ep in eps:
            labels = ep.effective_labels or [reserved.INIT_LABEL]
            key = (frozenset(labels), state.mode_for(ep.policy_enforcement))
            if key not in by_key:
                by_key[key] = await turns.drive(state.resolve_steps(labels, state.identities, ep.policy_enforcement))
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
        written: list[Endpoint] = []
        try:
            for ep in eps:
                written.append(ep)
                await asyncio.to_thread(self._write_endpoint_maps, ep, wanted[ep.id],
                                        pols[ep.id].ingress_enforced, pols[ep.id].egress_enforced)
            await commit()
        except BaseException as exc:
            log.warning("policy.rolled_back", endpoints=len(written), error=str(exc))
            for ep in reversed(written):
                await asyncio.to_thread(self._write_endpoint_maps, ep, *before[ep.id])
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

    # ---- endpoint hooks (DatapathHooks) ---------------------------------------

    async def _assign_identity(self, ep: Endpoint) -> bool:
        """(Re)allocate the endpoint's identity from its labels; True if it changed."""
        labels = ep.effective_labels
        if not labels:
            new = Identity(reserved.INIT, reserved.labels_for(reserved.INIT))  # type: ignore[arg-type]
        else:
            new = await self.allocator.allocate(Labels.parse(labels))
        old = self._ep_identity.get(ep.id)
        self._ep_identity[ep.id] = new
        ep.identity = new.id
        if old is not None and old.id != new.id and not old.is_reserved:
            await self.allocator.release(old)
        return old is None or old.id != new.id

    async def endpoint_created(self, ep: Endpoint) -> None:
        t0 = time.perf_counter()
        async with self._lock:
            self.endpoints[ep.id] = ep
            if ep.state not in (State.WAITING_FOR_IDENTITY, State.RESTORING):
                ep.set_state(State.WAITING_FOR_IDENTITY, "allocating identity")
            await self._assign_identity(ep)
            self.ipcache.upsert_endpoint(ep.id, (ep.ipv4, ep.ipv6), ep.identity)
            ep.set_state(State.WAITING_TO_REGENERATE, "identity resolved")
            await self._regenerate(ep, self.identities.identity_labels())
            if self.dp is not None:
                await self.dp.attach_async(ep.ifindex)
        log.debug("endpoint.regenerated", endpoint=ep.id, identity=ep.identity,
                  duration_ms=round((time.perf_counter() - t0) * 1000, 2))

    async def endpoint_changed(self, ep: Endpoint) -> None:
        """Labels changed: new identity, then every endpoint is re-evaluated."""
        t0 = time.perf_counter()
        async with self._lock:
            if ep.id not in self.endpoints:
                return
            if await self._assign_identity(ep):
                self.ipcache.upsert_endpoint(ep.id, (ep.ipv4, ep.ipv6), ep.identity)
                await self._regenerate_all()
            elif ep.state != State.READY:
                await self._regenerate(ep, self.identities.identity_labels())
        log.debug("endpoint.labels_applied", endpoint=ep.id, identity=ep.identity,
                  duration_ms=round((time.perf_counter() - t0) * 1000, 2))

    async def endpoint_deleted(self, ep: Endpoint) -> None:
        async with self._lock:
            self.endpoints.pop(ep.id, None)
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
            # Forgotten only once released: a retry after a failed step above
            # (DeleteEndpoint runs again) still holds the reference to drop.
            ident = self._ep_identity.get(ep.id)
            if ident is not None and not ident.is_reserved:
                await self.allocator.release(ident)
            self._ep_identity.pop(ep.id, None)

    async def regenerate(self, ep: Endpoint) -> None:
        """One endpoint's own settings (PolicyEnforcement) changed."""
        async with self._lock:
            await self._regenerate(ep, self.identities.identity_labels())

    # ---- regeneration -----------------------------------------------------------

    def resolve_endpoint(self, ep: Endpoint, identities: Mapping[int, list[str]]) -> EndpointPolicy:
        state = self.policy.state
        labels = ep.effective_labels or [reserved.INIT_LABEL]
        return resolve(state.repo, labels, identities, state.mode_for(ep.policy_enforcement))

    async def _regenerate(self, ep: Endpoint, identities: Mapping[int, list[str]]) -> None:
        """One endpoint under the current policy. All or nothing: if its new
        policy does not fit its map (PolicyMapFull names the endpoint and the
        limit), it keeps its previous entries and is not-ready."""
        if not self._begin(ep):
            return
        state = self.policy.state
        labels = ep.effective_labels or [reserved.INIT_LABEL]
        pol = await Turns().drive(state.resolve_steps(labels, identities, ep.policy_enforcement))
        if self.dp is not None:
            try:
                await asyncio.to_thread(self._write_endpoint_maps, ep, _map_entries(pol),
                                        pol.ingress_enforced, pol.egress_enforced)
            except Exception as exc:
                ep.set_state(State.NOT_READY, f"regeneration failed: {exc}")
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
        """Every endpoint under the current policy (identities changed). One
        endpoint that cannot take it keeps its previous policy; the others
        are still regenerated."""
        self._follow_moved_identities()
        identities = self.identities.identity_labels()
        for ep in list(self.endpoints.values()):
            try:
                await self._regenerate(ep, identities)
            except Exception as exc:
                log.error("endpoint.regenerate_failed", endpoint=ep.id, error=str(exc))

    async def regenerate_all(self) -> None:
        async with self._lock:
            await self._regenerate_all()
