"""The policy repository: the ordered list of imported rules plus a revision.

Revision numbering (a decision, documented because users see it): a fresh
repository has revision 0 (``INITIAL_REVISION``), and every successful import
or *effective* delete bumps it by one, so the first ``cilium policy import``
reports ``Revision: 1``, as users of Cilium's Docker guide see it. Endpoints
record the revision they enforce, which is what ``cilium policy wait REV``
waits for. A delete that matches no rule changes nothing and keeps the
revision (Cilium does the same), and a failed import changes nothing at all
(everything is validated first).

Not thread-safe by design: the agent mutates it from its single asyncio loop.
Changes are made on a :meth:`Repository.copy` (cheap: rules are immutable
and shared), so an import costs in proportion to what it adds: old rules are
neither re-parsed nor re-serialized, and the selector groups and CIDR prefix
counts are updated, not rebuilt.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Iterable, Sequence

from docker_cilium.errors import BadRequest

from .api.errors import PolicyValidationError
from .api.parse import load_json, parse_rules
from .api.rule import Rule, RuleLabel
from .api.selector import ANY_SOURCE, EndpointSelector, LabelSet, split_label

# An empty repository is revision 0, so the first import prints `Revision: 1`
# as users of Cilium's Docker guide expect.
INITIAL_REVISION = 0


class PolicyRepositoryError(BadRequest):
    """A repository operation was refused (e.g. delete without labels)."""


def _parse_query_labels(labels: Iterable[str]) -> list[tuple[str, str, str]]:
    """Query labels: ``source:key=value``; without a source, any source matches
    (so ``name=l3-rule`` finds a rule labelled ``unspec:name=l3-rule``)."""
    out = []
    for text in labels:
        source, key, value = split_label(str(text), ANY_SOURCE)
        if not key:
            raise PolicyRepositoryError(f"invalid label {text!r}")
        out.append((source, key, value))
    return out


def _rule_has_labels(rule: Rule, query: Sequence[tuple[str, str, str]]) -> bool:
    def has(q: tuple[str, str, str], lbl: RuleLabel) -> bool:
        source, key, value = q
        return lbl.key == key and lbl.value == value and (source == ANY_SOURCE or lbl.source == source)

    return all(any(has(q, lbl) for lbl in rule.labels) for q in query)


def rule_prefixes(rule: Rule) -> set[str]:
    """The prefixes one rule needs a CIDR identity (and an ipcache entry) for:
    its CIDR peers after except-subtraction, AND the except prefixes
    themselves (so that LPM lookups inside an except find the except's
    identity instead of falling into a wider, allowed prefix)."""
    out: set[str] = set()
    for entry in (*rule.ingress, *rule.egress):
        for c in entry.cidr:
            out.add(str(c.network))
        for cs in entry.cidr_set:
            out.update(str(n) for n in cs.allowed_prefixes())
            out.update(str(e.network) for e in cs.except_)
    return out


class Repository:
    """Ordered rules + revision. All mutations are all-or-nothing."""

    def __init__(self, rules: Iterable[Rule] = (), revision: int = INITIAL_REVISION) -> None:
        self._rules: list[Rule] = []
        self._revision = revision
        # Derived from _rules and kept in step by every change:
        self._groups: dict[EndpointSelector, tuple[Rule, ...]] = {}  # rules by endpointSelector
        self._prefixes: Counter[str] = Counter()  # CIDR prefixes -> rules naming them
        self._extend(list(rules))

    def _extend(self, new: list[Rule]) -> None:
        self._rules.extend(new)
        grouped: dict[EndpointSelector, list[Rule]] = {}
        for r in new:
            grouped.setdefault(r.endpoint_selector, []).append(r)
            self._prefixes.update(rule_prefixes(r))
        for sel, rules in grouped.items():
            self._groups[sel] = self._groups.get(sel, ()) + tuple(rules)

    def copy(self) -> "Repository":
        """An independent repository with the same rules (shared, immutable)."""
        other = Repository(revision=self._revision)
        other._rules = list(self._rules)
        other._groups, other._prefixes = dict(self._groups), Counter(self._prefixes)
        return other

    @property
    def revision(self) -> int:
        return self._revision

    @property
    def rules(self) -> tuple[Rule, ...]:
        return tuple(self._rules)

    def __len__(self) -> int:
        return len(self._rules)

    def add(self, rules: Iterable[Rule] | bytes | str | list[Any]) -> int:
        """Append rules (``Rule`` objects or a raw policy document) and return the
        new revision. Everything is validated before anything changes."""
        if isinstance(rules, (bytes, bytearray, str)):
            new = parse_rules(rules)
        else:
            items = list(rules)
            if all(isinstance(r, Rule) for r in items):
                new = items
            else:
                new = parse_rules(items)
        self._extend(new)
        self._revision += 1
        return self._revision

    def selecting(self, labels: LabelSet) -> list[Rule]:
        """Rules whose endpointSelector selects ``labels`` (each distinct
        selector is matched once), grouped by selector."""
        return [r for sel, rules in self._groups.items() if sel.matches(labels) for r in rules]

    def cidr_prefixes(self) -> set[str]:
        """Every prefix the rules need a CIDR identity for (see ``rule_prefixes``)."""
        return set(self._prefixes)

    def get(self, labels: Iterable[str] | None = None) -> list[Rule]:
        """Rules whose labels contain all ``labels`` (all rules if None/empty)."""
        if not labels:
            return list(self._rules)
        query = _parse_query_labels(labels)
        return [r for r in self._rules if _rule_has_labels(r, query)]

    def delete_by_labels(self, labels: Iterable[str]) -> tuple[int, int]:
        """Delete every rule whose labels contain all ``labels``; returns
        (number deleted, revision). Refuses an empty label list, because
        "delete with no filter" wiping everything is too easy a mistake; use
        :meth:`delete_all` for that."""
        labels = list(labels or [])
        if not labels:
            raise PolicyRepositoryError("refusing to delete rules without labels; use delete_all() (policy delete --all)")
        query = _parse_query_labels(labels)
        keep = [r for r in self._rules if not _rule_has_labels(r, query)]
        return self._replace(keep)

    def delete_all(self) -> tuple[int, int]:
        return self._replace([])

    def _replace(self, keep: list[Rule]) -> tuple[int, int]:
        deleted = len(self._rules) - len(keep)
        if deleted:
            self._rules, self._groups, self._prefixes = [], {}, Counter()
            self._extend(keep)
            self._revision += 1
        return deleted, self._revision

    # --- persistence -----------------------------------------------------
    def to_json(self) -> str:
        """The persisted form; each rule is serialized once (Rule.compact_json)."""
        return '{"revision": %d, "rules": [%s]}' % (self._revision, ", ".join(r.compact_json for r in self._rules))

    def load_json(self, data: bytes | str) -> None:
        """Replace the contents with a :meth:`to_json` dump (validated first)."""
        self.load_obj(load_json(data))

    def load_obj(self, obj: Any) -> None:
        """Replace the contents with a decoded :meth:`to_json` dump (validated first)."""
        if not isinstance(obj, dict) or set(obj) - {"revision", "rules"}:
            raise PolicyValidationError("", "not a policy repository dump (expected {revision, rules})")
        revision = obj.get("revision", INITIAL_REVISION)
        if not isinstance(revision, int) or isinstance(revision, bool) or revision < 0:
            raise PolicyValidationError("revision", "revision must be a non-negative integer")
        rules = parse_rules(obj.get("rules") or [])
        self._rules, self._groups, self._prefixes = [], {}, Counter()
        self._extend(rules)
        self._revision = revision

    @classmethod
    def from_json(cls, data: bytes | str) -> "Repository":
        repo = cls()
        repo.load_json(data)
        return repo

    @classmethod
    def from_obj(cls, obj: Any) -> "Repository":
        repo = cls()
        repo.load_obj(obj)
        return repo
