"""The agent's policy repository: import, get and delete rules, revisions,
persistence, the enforcement mode, trace.

Every change is validated on a copy, persisted, and only then swapped in;
the CIDR prefixes the rules name get their identities (``ipcache``), and the
observers (the endpoint regenerator) are awaited, so when ``cilium policy
import`` returns every local endpoint already enforces the new revision.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Protocol

import structlog

from docker_cilium.identity.cache import IdentityCache
from docker_cilium.ipcache import IPCache
from docker_cilium.kvstore import keys
from docker_cilium.kvstore.backend import Backend

from .repository import PolicyRepositoryError, Repository
from .resolve import ENFORCEMENT_MODES, EndpointPolicy, cidr_prefixes, parse_enforcement, resolve, trace

log = structlog.get_logger(__name__)


class PolicyObserver(Protocol):
    """Told after every change of rules or enforcement mode (the regenerator)."""

    async def policy_changed(self) -> None: ...


class PolicyManager:
    def __init__(self, store: Backend, ipcache: IPCache, identities: IdentityCache,
                 enforcement: str = "default") -> None:
        self.store = store
        self.ipcache = ipcache
        self.identities = identities
        self.repo = Repository()
        self.enforcement = enforcement
        self._flag_mode = enforcement  # what --enable-policy said at start
        self._lock = asyncio.Lock()
        self._observers: list[PolicyObserver] = []

    def subscribe(self, observer: PolicyObserver) -> None:
        self._observers.append(observer)

    async def _rules_changed(self) -> None:
        await self.ipcache.allocate_cidrs(cidr_prefixes(self.repo))
        await self._notify()

    async def _notify(self) -> None:
        for observer in self._observers:
            await observer.policy_changed()

    async def start(self) -> None:
        """Restore the repository and mode; the ipcache must be started first."""
        raw = await self.store.get(keys.POLICY_RULES)
        if raw:
            doc = json.loads(raw)
            self.repo = Repository.from_json(json.dumps(doc["repository"]))
            # `cilium config PolicyEnforcement=...` survives restarts, unless the
            # agent was restarted with a different --enable-policy flag.
            if doc.get("flag") == self._flag_mode and doc.get("enforcement") in ENFORCEMENT_MODES:
                self.enforcement = doc["enforcement"]
        await self.ipcache.allocate_cidrs(cidr_prefixes(self.repo))
        log.info("policy.restored", revision=self.repo.revision, rules=len(self.repo.rules))

    async def _persist(self, repo: Repository | None = None, enforcement: str | None = None) -> None:
        """Write the repository and mode; callers swap in-memory state only after this."""
        doc = {"repository": json.loads((repo or self.repo).to_json()),
               "enforcement": enforcement or self.enforcement, "flag": self._flag_mode}
        await self.store.put(keys.POLICY_RULES, json.dumps(doc).encode())

    @property
    def revision(self) -> int:
        return self.repo.revision

    # ---- resolution (read by the regenerator) --------------------------------------

    def mode_for(self, endpoint_mode: str) -> str:
        """An endpoint's own PolicyEnforcement, unless it is ``default``."""
        return endpoint_mode if endpoint_mode != "default" else self.enforcement

    def resolve(self, labels: list[str], identities: dict[int, list[str]], endpoint_mode: str) -> EndpointPolicy:
        return resolve(self.repo, labels, identities, self.mode_for(endpoint_mode))

    # ---- operations (API) ------------------------------------------------------------

    async def import_rules(self, raw: bytes) -> int:
        t0 = time.perf_counter()
        async with self._lock:
            candidate = Repository.from_json(self.repo.to_json())
            rev = candidate.add(raw)  # raises PolicyValidationError; nothing changed
            await self._persist(candidate)
            self.repo = candidate
            await self._rules_changed()
        log.info("policy.import", revision=rev, rules=len(self.repo.rules),
                 duration_ms=round((time.perf_counter() - t0) * 1000, 2))
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
            await self._rules_changed()
        return deleted, rev

    def trace(self, src_labels: list[str], dst_labels: list[str], dport: int | None,
              proto: str) -> tuple[str, list[str]]:
        return trace(self.repo, src_labels, dst_labels, dport, proto, self.identities.identity_labels(),
                     self.enforcement)

    async def set_enforcement(self, mode: str) -> None:
        mode = parse_enforcement(mode)
        async with self._lock:
            await self._persist(enforcement=mode)
            self.enforcement = mode
            await self._notify()
