"""Endpoint regeneration: labels -> identity -> resolved policy -> BPF maps.

This is where the pure parts meet the kernel. The policy repository and the
resolver know nothing of maps; the datapath knows nothing of rules. On every
change (an endpoint appears, its labels change, a policy is imported or
deleted, the enforcement mode changes) the affected endpoints are
"regenerated": their policy is resolved against every known identity and
the difference is written into the pinned BPF maps. No clang runs here: the
datapath object was compiled once at agent start and is shared by all
endpoints, so regeneration costs map updates only.

Regeneration is synchronous with the API call that caused it, so when
`cilium policy import` returns, every local endpoint already enforces the new
revision; `cilium policy wait` therefore returns at once locally.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import time
from typing import Any, Iterable

import structlog

from docker_cilium.datapath.maps.lxcmap import EndpointInfo
from docker_cilium.datapath.maps.policymap import PolicyEntry as MapPolicyEntry
from docker_cilium.endpoint.model import Endpoint, State
from docker_cilium.errors import BadRequest
from docker_cilium.identity import reserved
from docker_cilium.identity.allocator import Identity, IdentityAllocator
from docker_cilium.identity.labels import Label, Labels
from docker_cilium.kvstore.backend import Backend
from docker_cilium.policy import (
    ENFORCEMENT_MODES,
    EndpointPolicy,
    PolicyRepositoryError,
    Repository,
    cidr_identity_labels,
    cidr_prefixes,
    parse_enforcement,
    resolve,
    trace,
)

log = structlog.get_logger(__name__)

POLICY_KEY = "cilium/state/policy/v1/rules"
CIDR_IDS_KEY = "cilium/state/policy/v1/cidr-identities"
LOCAL_IDENTITY_BASE = reserved.LOCAL_SCOPE  # node-local identities (CIDR)
ENDPOINT_OPTIONS = ("PolicyEnforcement",)  # what `cilium endpoint config` may change
WORLD_PREFIXES = ("0.0.0.0/0", "::/0")


def _host_prefix(ip: str) -> str:
    addr = ipaddress.ip_address(ip)
    return f"{addr}/{32 if addr.version == 4 else 128}"


class Regenerator:
    """Implements the endpoint manager's DatapathHooks and the policy operations."""

    def __init__(self, store: Backend, allocator: IdentityAllocator, datapath: Any | None,
                 enforcement: str = "default") -> None:
        self.store = store
        self.allocator = allocator
        self.dp = datapath  # docker_cilium.datapath.loader.Datapath (None: no BPF)
        self.repo = Repository()
        self.enforcement = enforcement
        self.endpoints: dict[int, Endpoint] = {}
        self._ep_identity: dict[int, Identity] = {}
        self._cidr_ids: dict[str, int] = {}
        self._host_ips: set[str] = set()
        self._lock = asyncio.Lock()
        self.save_endpoint: Any = None  # set by the daemon: persists an endpoint record
        self._pending: asyncio.Task[None] | None = None
        self._dirty = False
        self._flag_mode = enforcement  # what --enable-policy said at start
        allocator.on_change = self._identities_changed

    async def close(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._pending

    async def _save(self, ep: Endpoint) -> None:
        if self.save_endpoint is not None:
            await self.save_endpoint(ep)

    def _identities_changed(self) -> None:
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

    # ---- start -------------------------------------------------------------------

    async def start(self, host_ips: Iterable[str]) -> None:
        raw = await self.store.get(POLICY_KEY)
        if raw:
            doc = json.loads(raw)
            self.repo = Repository.from_json(json.dumps(doc["repository"]))
            # `cilium config PolicyEnforcement=...` survives restarts, unless the
            # agent was restarted with a different --enable-policy flag.
            if doc.get("flag") == self._flag_mode and doc.get("enforcement") in ENFORCEMENT_MODES:
                self.enforcement = doc["enforcement"]
        raw = await self.store.get(CIDR_IDS_KEY)
        if raw:
            self._cidr_ids = {k: int(v) for k, v in json.loads(raw).items()}
        self._host_ips = set(host_ips)
        if self.dp is not None:
            ipc = self.dp.maps.ipcache
            for prefix in WORLD_PREFIXES:
                ipc.upsert(prefix, reserved.WORLD)
            for ip in self._host_ips:
                ipc.upsert(_host_prefix(ip), reserved.HOST)
        await self._sync_cidr_identities()
        log.info("policy.restored", revision=self.repo.revision, rules=len(self.repo.rules))

    async def _persist(self, repo: Repository | None = None, enforcement: str | None = None) -> None:
        """Write the repository and mode; callers swap in-memory state only after this."""
        doc = {"repository": json.loads((repo or self.repo).to_json()),
               "enforcement": enforcement or self.enforcement, "flag": self._flag_mode}
        await self.store.put(POLICY_KEY, json.dumps(doc).encode())

    @property
    def revision(self) -> int:
        return self.repo.revision

    # ---- identities --------------------------------------------------------------

    def identity_labels(self) -> dict[int, list[str]]:
        """Every identity a rule may select: reserved, cluster-allocated, CIDR."""
        out: dict[int, list[str]] = {}
        for num, labels in reserved.all_reserved().items():
            out[num] = labels.to_strings()
        for ident in self.allocator.cached():
            out[ident.id] = ident.labels.to_strings()
        for prefix, num in self._cidr_ids.items():
            out[num] = sorted(cidr_identity_labels(prefix))
        return out

    def identities(self) -> list[Identity]:
        found = {num: Identity(num, labels) for num, labels in reserved.all_reserved().items()}
        for ident in self.allocator.cached():
            found[ident.id] = ident
        for prefix, num in self._cidr_ids.items():
            found[num] = Identity(num, Labels.parse(sorted(cidr_identity_labels(prefix))))
        return [found[k] for k in sorted(found)]

    def identity(self, num: int) -> Identity | None:
        return next((i for i in self.identities() if i.id == num), None)

    async def _sync_cidr_identities(self) -> None:
        """Give every prefix the rules use a node-local identity and an ipcache entry."""
        wanted = cidr_prefixes(self.repo)
        changed = False
        for prefix in sorted(wanted - set(self._cidr_ids)):
            used = set(self._cidr_ids.values())
            num = next(n for n in range(LOCAL_IDENTITY_BASE + 1, LOCAL_IDENTITY_BASE + (1 << 24)) if n not in used)
            self._cidr_ids[prefix] = num
            changed = True
        stale = set(self._cidr_ids) - wanted
        for prefix in stale:
            del self._cidr_ids[prefix]
            changed = True
        if self.dp is not None:
            ipc = self.dp.maps.ipcache
            # Host and endpoint addresses keep their identity even when a CIDR
            # rule names exactly them: CIDR rules only describe non-endpoints.
            protected = self._protected_prefixes()
            for prefix, num in self._cidr_ids.items():
                if prefix not in WORLD_PREFIXES and prefix not in protected:
                    ipc.upsert(prefix, num)
            for prefix in stale:
                if prefix in WORLD_PREFIXES:
                    ipc.upsert(prefix, reserved.WORLD)
                elif prefix not in protected:
                    ipc.delete(prefix)
            # A /0 CIDR rule must not take the world entry away from world.
            for prefix in WORLD_PREFIXES:
                if prefix in self._cidr_ids:
                    ipc.upsert(prefix, self._cidr_ids[prefix])
        if changed:
            await self.store.put(CIDR_IDS_KEY, json.dumps(self._cidr_ids).encode())

    def _protected_prefixes(self) -> set[str]:
        out = {_host_prefix(ip) for ip in self._host_ips}
        for ep in self.endpoints.values():
            out.update(_host_prefix(ip) for ip in (ep.ipv4, ep.ipv6) if ip)
        return out

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
            self._write_ipcache(ep)
            ep.set_state(State.WAITING_TO_REGENERATE, "identity resolved")
            await self._regenerate(ep, self.identity_labels())
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
                self._write_ipcache(ep)
                await self._regenerate_all()
            elif ep.state != State.READY:
                await self._regenerate(ep, self.identity_labels())
        log.debug("endpoint.labels_applied", endpoint=ep.id, identity=ep.identity,
                  duration_ms=round((time.perf_counter() - t0) * 1000, 2))

    async def endpoint_deleted(self, ep: Endpoint) -> None:
        async with self._lock:
            self.endpoints.pop(ep.id, None)
            ident = self._ep_identity.pop(ep.id, None)
            if self.dp is not None:
                maps = self.dp.maps
                ips = [ip for ip in (ep.ipv4, ep.ipv6) if ip]
                maps.endpoints.delete(ep.ifindex, ep.ipv4, ep.ipv6)
                maps.policy.delete_endpoint(ep.id)
                for ip in ips:
                    prefix = _host_prefix(ip)
                    if prefix in self._cidr_ids:
                        maps.ipcache.upsert(prefix, self._cidr_ids[prefix])
                    else:
                        maps.ipcache.delete(prefix)
                # A later container on the same address must not inherit these
                # flows (and skip policy through them).
                await asyncio.to_thread(maps.ct.flush_addresses, *ips)
            if ident is not None and not ident.is_reserved:
                await self.allocator.release(ident)

    def _write_ipcache(self, ep: Endpoint) -> None:
        if self.dp is None:
            return
        for ip in (ep.ipv4, ep.ipv6):
            if ip:
                self.dp.maps.ipcache.upsert(_host_prefix(ip), ep.identity)

    # ---- regeneration -----------------------------------------------------------

    def mode_for(self, ep: Endpoint) -> str:
        return ep.policy_enforcement if ep.policy_enforcement != "default" else self.enforcement

    def resolve_endpoint(self, ep: Endpoint, identities: dict[int, list[str]] | None = None) -> EndpointPolicy:
        labels = ep.effective_labels or ["reserved:init"]
        return resolve(self.repo, labels, identities or self.identity_labels(), self.mode_for(ep))

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
        maps = self.dp.maps
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

    async def _follow_moved_identities(self) -> None:
        """Endpoints whose number the allocator replaced (it went to other labels) take the new one."""
        for ep_id, ident in list(self._ep_identity.items()):
            ep = self.endpoints.get(ep_id)
            cur = self.allocator.current(ident)
            if ep is None or ident.is_reserved or cur.id == ident.id:
                continue
            log.warning("endpoint.identity_moved", endpoint=ep_id, old=ident.id, new=cur.id)
            self._ep_identity[ep_id] = cur
            ep.identity = cur.id
            self._write_ipcache(ep)
            await self._save(ep)

    async def _regenerate_all(self) -> None:
        await self._follow_moved_identities()
        identities = self.identity_labels()
        for ep in list(self.endpoints.values()):
            await self._regenerate(ep, identities)

    async def regenerate_all(self) -> None:
        async with self._lock:
            await self._regenerate_all()

    # ---- policy operations (API) -------------------------------------------------

    async def import_rules(self, raw: bytes) -> int:
        t0 = time.perf_counter()
        async with self._lock:
            candidate = Repository.from_json(self.repo.to_json())
            rev = candidate.add(raw)  # raises PolicyValidationError; nothing changed
            await self._persist(candidate)
            self.repo = candidate
            await self._sync_cidr_identities()
            await self._regenerate_all()
        log.info("policy.import", revision=rev, rules=len(self.repo.rules),
                 endpoints=len(self.endpoints), duration_ms=round((time.perf_counter() - t0) * 1000, 2))
        return rev

    def get_rules(self, labels: list[str]) -> list[dict]:
        return [r.to_dict() for r in self.repo.get(labels or None)]

    async def delete_rules(self, labels: list[str], all: bool = False) -> tuple[int, int]:
        async with self._lock:
            candidate = Repository.from_json(self.repo.to_json())
            if all:
                deleted, rev = candidate.delete_all()
            else:
                if not labels:
                    raise PolicyRepositoryError("no labels given: pass labels or use --all to delete every rule")
                deleted, rev = candidate.delete_by_labels(labels)
            await self._persist(candidate)
            self.repo = candidate
            await self._sync_cidr_identities()
            await self._regenerate_all()
        return deleted, rev


    def trace(self, src_labels: list[str], dst_labels: list[str], dport: int | None,
              proto: str) -> tuple[str, list[str]]:
        return trace(self.repo, src_labels, dst_labels, dport, proto, self.identity_labels(),
                     self.enforcement)

    async def set_enforcement(self, mode: str) -> None:
        mode = parse_enforcement(mode)
        async with self._lock:
            await self._persist(enforcement=mode)
            self.enforcement = mode
            await self._regenerate_all()

    async def update_endpoint_labels(self, ep: Endpoint, add: list[str], delete: list[str]) -> None:
        for raw in list(add) + list(delete):
            try:
                label = Label.parse(raw)
            except ValueError as exc:
                raise BadRequest(f"invalid label {raw!r}: {exc}") from None
            if raw in add and label.source in ("reserved", "cidr"):
                raise BadRequest(f"label {raw!r}: source {label.source!r} is reserved for the agent")
        add_s = {str(Label.parse(l)) for l in add}
        del_s = {str(Label.parse(l)) for l in delete}
        before = (ep.user_labels, ep.disabled_labels)
        ep.user_labels = sorted((set(ep.user_labels) | add_s) - del_s)
        ep.disabled_labels = sorted((set(ep.disabled_labels) | (del_s & set(ep.labels))) - add_s)
        try:
            await self.endpoint_changed(ep)
        except BaseException:
            ep.user_labels, ep.disabled_labels = before
            raise
        await self._save(ep)

    async def update_endpoint_config(self, ep: Endpoint, changes: dict[str, str]) -> None:
        for key in changes:
            if key not in ENDPOINT_OPTIONS:
                raise BadRequest(f"unknown endpoint option {key!r} (known: {', '.join(ENDPOINT_OPTIONS)})")
        mode = parse_enforcement(changes.get("PolicyEnforcement", ep.policy_enforcement))
        async with self._lock:
            ep.policy_enforcement = mode
            await self._regenerate(ep, self.identity_labels())
        await self._save(ep)

