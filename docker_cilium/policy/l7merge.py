"""L7 rules of resolved policy entries: Cilium's union semantics.

For a (direction, peer identity, port, TCP) the requests allowed are the
union of every rule that allows that peer on that port. The BPF lookup
(``bpf_src/lib/policy.h``) stops at the first of (identity, port, proto),
(identity, 0, 0), (0, port, proto), (0, 0, 0) that exists, so an entry must
also carry what the more general entries it shadows allow:

* if a shadowed entry allows without L7 (an L3-only entry always does), the
  entry is a plain allow: a rule let that peer talk to the port unfiltered;
* otherwise the L7 rules of the shadowed port entries (the wildcard peer's on
  the same port) are merged into it.

Entries without a port (L3-only) never carry L7 rules.
"""

from __future__ import annotations

from typing import Iterable, TYPE_CHECKING

from .api.l7 import PortRuleHTTP

if TYPE_CHECKING:
    from .resolve import PolicyEntry

#: (direction, identity, port, proto)
Key = tuple[str, int, int, int]
#: per key: None = plain allow, else the allowed HTTP requests so far
Acc = dict[Key, "set[PortRuleHTTP] | None"]


def add(acc: Acc, key: Key, l7: Iterable[PortRuleHTTP] | None) -> None:
    """One rule allows ``key``, with ``l7`` (None: every connection)."""
    if l7 is None:
        acc[key] = None
        return
    have = acc.get(key, ())
    if have is None:
        return
    if not have:
        have = acc[key] = set()
    have.update(l7)  # type: ignore[union-attr]


def effective_l7(acc: Acc, key: Key) -> tuple[PortRuleHTTP, ...] | None:
    """What the entry at ``key`` must allow, given the entries it shadows."""
    direction, ident, port, proto = key
    rules = acc[key]
    if rules is None or port == 0:
        return None
    merged = set(rules)
    shadowed = [(direction, ident, 0, 0), (direction, 0, port, proto), (direction, 0, 0, 0)]
    for k in shadowed:
        if k == key or k not in acc:
            continue
        more = acc[k]
        if more is None:
            return None
        merged |= more
    return tuple(sorted(merged))


def entries(acc: Acc, entry_type: "type[PolicyEntry]") -> frozenset["PolicyEntry"]:
    """The policy entries of ``acc``, each with its effective L7 rules."""
    out = []
    for key, rules in acc.items():
        l7 = None if rules is None else effective_l7(acc, key)
        out.append(entry_type(*key, l7=l7))
    return frozenset(out)
