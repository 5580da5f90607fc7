"""The agent's policy repository: import, get and delete rules, revisions,
persistence, the enforcement mode, trace.

Every change is one transaction: the new repository is built on a copy (old
rules are shared, not re-parsed), the CIDR identities it needs are planned
(``ipcache``), and the observer (the endpoint regenerator) resolves it for
every endpoint and writes their maps; only then is it persisted and swapped
in. If any endpoint cannot enforce it (e.g. its policy map would overflow),
nothing changes: maps, revision and the persisted rules stay as they were.
So when ``cilium policy import`` returns, every local endpoint already
enforces the new revision, and when it fails, none does.

Parsing and resolution run on the event loop in steps (``turns``), so plugin
calls are answered during a large import; what one import may carry is
bounded (``MAX_IMPORT_BYTES``, checked by the API as it reads the document,
and ``MAX_IMPORT_RULES``).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Generator, Iterable, Mapping, Protocol, Sequence

import structlog

from docker_cilium.errors import PayloadTooLarge
from docker_cilium.identity.cache import IdentityCache
from docker_cilium.ipcache import IPCache
from docker_cilium.kvstore import keys
from docker_cilium.kvstore.backend import Backend

from .api.parse import dump_rules_steps, iter_json_array, load_json, rule_from_item
from .api.rule import Rule
from .repository import PolicyRepositoryError, Repository
from .resolve import (ENFORCEMENT_MODES, EndpointPolicy, build_identity_index, parse_enforcement, resolve_steps,
                      trace)
from .turns import Turns, quiet_gc

log = structlog.get_logger(__name__)

#: Largest policy document one import may send (bytes): 100,000 rules of a
#: few hundred bytes each, indented.
MAX_IMPORT_BYTES = 64 << 20
#: Most rules one import may carry.
MAX_IMPORT_RULES = 100_000


@dataclass(frozen=True)
class PolicyState:
    """A repository and an enforcement mode: what endpoints enforce, or are
    about to (a change not yet committed), and the identities to resolve with."""

    repo: Repository
    enforcement: str
    identities: Mapping[int, list[str]] = field(default_factory=dict, compare=False)

    def mode_for(self, endpoint_mode: str) -> str:
        """An endpoint's own PolicyEnforcement, unless it is ``default``."""
        return endpoint_mode if endpoint_mode != "default" else self.enforcement

    def resolve_steps(self, labels: list[str], identities: Mapping[int, Iterable[str]],
                      endpoint_mode: str) -> Generator[None, None, EndpointPolicy]:
        return resolve_steps(self.repo, labels, identities, self.mode_for(endpoint_mode))


Commit = Callable[[], Awaitable[None]]


class PolicyObserver(Protocol):
    """Enforces every change of rules or enforcement mode (the regenerator)."""

    async def apply_policy(self, change: PolicyState, commit: Commit) -> None:
        """Make every endpoint enforce ``change``, then await ``commit``; all or
        nothing: if it cannot (or ``commit`` raises), it puts back what it
        wrote and raises."""


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

    @property
    def state(self) -> PolicyState:
        return PolicyState(self.repo, self.enforcement)

    async def _change(self, repo: Repository, enforcement: str) -> None:
        """The one path of every change (callers hold ``_lock``); see module doc."""
        plan = self.ipcache.plan_cidrs(repo.cidr_prefixes())
        change = PolicyState(repo, enforcement, self.identities.identity_labels(plan.ids))
        await build_identity_index(change.identities, Turns())

        async def commit() -> None:
            await self._persist(repo, enforcement)
            try:
                await self.ipcache.commit_cidrs(plan)
            except BaseException:
                await self._persist()  # the previous repository, as the maps are again
                raise
            self.repo, self.enforcement = repo, enforcement

        async def through(i: int) -> None:
            if i == len(self._observers):
                await commit()
            else:
                await self._observers[i].apply_policy(change, lambda: through(i + 1))

        await through(0)

    async def start(self) -> None:
        """Restore the repository and mode; the ipcache must be started first."""
        raw = await self.store.get(keys.POLICY_RULES)
        if raw:
            doc = load_json(raw)  # decoded once, with the import's bounds
            self.repo = Repository.from_obj(doc["repository"])
            # `cilium config PolicyEnforcement=...` survives restarts, unless the
            # agent was restarted with a different --enable-policy flag.
            if doc.get("flag") == self._flag_mode and doc.get("enforcement") in ENFORCEMENT_MODES:
                self.enforcement = doc["enforcement"]
        await self.ipcache.allocate_cidrs(self.repo.cidr_prefixes())
        log.info("policy.restored", revision=self.repo.revision, rules=len(self.repo.rules))

    async def _persist(self, repo: Repository | None = None, enforcement: str | None = None) -> None:
        """Write the repository and mode; callers swap in-memory state only after this.
        Each rule's JSON was made when it was added: nothing is re-serialized."""
        doc = '{"repository": %s, "enforcement": %s, "flag": %s}' % (
            (repo or self.repo).to_json(), json.dumps(enforcement or self.enforcement), json.dumps(self._flag_mode))
        await self.store.put(keys.POLICY_RULES, doc.encode())

    @property
    def revision(self) -> int:
        return self.repo.revision

    # ---- operations (API) ------------------------------------------------------------

    async def _parse(self, raw: bytes) -> list[Rule]:
        """Decode and validate a policy document one rule at a time, giving the
        loop turns (each rule's persisted JSON is made here too). Its size in
        bytes was bounded where it was read (api/policy.py: MAX_IMPORT_BYTES)."""
        turns, rules = Turns(), []
        for i, item in enumerate(iter_json_array(raw)):
            if i == MAX_IMPORT_RULES:
                raise PayloadTooLarge(f"policy document has more than {MAX_IMPORT_RULES} rules, the most one "
                                      f"import may carry (MAX_IMPORT_RULES): split it into several imports")
            rules.append(rule_from_item(item, f"[{i}]"))  # its persisted JSON made now, between turns
            await turns()
        return rules

    async def import_rules(self, raw: bytes) -> tuple[int, list[Rule]]:
        """Add the document's rules; returns the new revision and the rules added."""
        t0 = time.perf_counter()
        async with self._lock:
            with quiet_gc():  # parsing only: the change below awaits threads and the store
                rules = await self._parse(raw)  # raises PolicyValidationError; nothing changed
            t1 = time.perf_counter()
            candidate = self.repo.copy()
            rev = candidate.add(rules)
            await self._change(candidate, self.enforcement)
        t2 = time.perf_counter()
        log.info("policy.import", revision=rev, rules=len(self.repo.rules), added=len(rules),
                 duration_ms=round((t2 - t0) * 1000, 2), parse_ms=round((t1 - t0) * 1000, 2))
        return rev, rules

    @staticmethod
    async def rules_json(rules: Sequence[Rule]) -> str:
        """Rules as the API returns them (parse.dump_rules), built with loop
        turns: 10,000 rules take a while."""
        return await Turns().drive(dump_rules_steps(rules))

    async def delete_rules(self, labels: list[str], all: bool = False) -> tuple[int, int]:
        async with self._lock:
            candidate = self.repo.copy()
            if all:
                deleted, rev = candidate.delete_all()
            else:
                if not labels:
                    raise PolicyRepositoryError("no labels given: pass labels or use --all to delete every rule")
                deleted, rev = candidate.delete_by_labels(labels)
            if deleted:
                await self._change(candidate, self.enforcement)
        return deleted, rev

    def trace(self, src_labels: list[str], dst_labels: list[str], dport: int | None,
              proto: str) -> tuple[str, list[str]]:
        return trace(self.repo, src_labels, dst_labels, dport, proto, self.identities.identity_labels(),
                     self.enforcement)

    async def set_enforcement(self, mode: str) -> None:
        mode = parse_enforcement(mode)
        async with self._lock:
            await self._change(self.repo, mode)
