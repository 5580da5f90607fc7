"""Which identities a peer selects, without scanning every identity.

Policy resolution asks, for every entry of every rule selecting an endpoint,
"which identities does this peer select?". With thousands of CIDR identities
(one per prefix a rule names), answering by matching each identity's labels
made resolution cost (entries x identities). This index answers:

* CIDR peers by prefix: CIDR identities sorted by network address, so the
  identities inside a prefix are one bisect away (an identity carries
  ``cidr:S`` exactly when its prefix lies inside S);
* endpoint selectors and entities over the cluster identities (not labelled
  ``reserved:world``), the few that exist; only a selector naming a
  ``reserved:``/``cidr:`` key looks at world identities too;
* ``world`` as the list of world-labelled identities.

Built once per identity snapshot (see ``identity.cache.IdentitySnapshot``),
and shared by every endpoint resolved against it.
"""

from __future__ import annotations

import bisect
import functools
import ipaddress
from typing import Callable, Generator, Iterable, Mapping

from docker_cilium.identity.reserved import WORLD_LABEL

from .api.cidr import cidr_label, v4_prefix
from .api.entities import ENTITY_CLUSTER, ENTITY_WORLD, entity_matches
from .api.rule import PeerRule
from .api.selector import EndpointSelector, LabelSet

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@functools.lru_cache(maxsize=1 << 17)
def _prefix_range(prefix: str) -> tuple[int, int, int]:
    """(IP version, first address, last address) of a prefix; parsed once."""
    v4 = v4_prefix(prefix)
    if v4 is not None:
        addr, plen = v4
        host = (1 << (32 - plen)) - 1
        return 4, addr & ~host, addr | host
    net = ipaddress.ip_network(prefix)
    return net.version, int(net.network_address), int(net.broadcast_address)


class IdentityIndex:
    """Identity number -> labels, indexed for peer selection (see module doc).

    ``identities`` is any mapping number -> label strings; one that also has
    ``cluster`` (number -> labels of the non-CIDR identities) and ``cidrs``
    (prefix -> number) is indexed without building the CIDR identities' label
    sets (``IdentitySnapshot``). ``reserved`` is added first.
    """

    def __init__(self, identities: Mapping[int, Iterable[str]], reserved: Mapping[int, Iterable[str]],
                 *, lazy: bool = False) -> None:
        self._source = identities
        self._labels: dict[int, LabelSet] = {}
        self.cluster: dict[int, LabelSet] = {}
        self.world: list[int] = []
        # version -> sorted [(network int, broadcast int, number)]
        self._cidr: dict[int, list[tuple[int, int, int]]] = {4: [], 6: []}
        self._starts: dict[int, list[int]] = {}
        #: The construction, as steps; run already unless ``lazy`` (then the
        #: caller drives it, e.g. with loop turns, before using the index).
        self.pending = self._fill(identities, reserved)
        if not lazy:
            for _ in self.pending:
                pass

    def _fill(self, identities: Mapping[int, Iterable[str]],
              reserved: Mapping[int, Iterable[str]]) -> Generator[None, None, None]:
        cluster = getattr(identities, "cluster", None)
        cidrs: Mapping[str, int] | None = getattr(identities, "cidrs", None)
        plain = identities if cluster is None or cidrs is None else cluster
        table: dict[int, Iterable[str]] = dict(reserved)
        table.update((int(k), v) for k, v in plain.items() if int(k) != 0)
        # A plain mapping's CIDR peers are matched on labels, as written.
        self._by_label = plain is identities
        for num, labels in table.items():
            ls = self._labels[num] = LabelSet.of(labels)
            if WORLD_LABEL in ls.strings:
                self.world.append(num)
            else:
                self.cluster[num] = ls
        for prefix, num in (cidrs or {}).items() if not self._by_label else ():
            if num not in table:
                self.world.append(num)
                version, lo, hi = _prefix_range(prefix)
                self._cidr[version].append((lo, hi, num))
                yield
        for entries in self._cidr.values():
            entries.sort()
        self._starts = {v: [e[0] for e in entries] for v, entries in self._cidr.items()}

    def labels(self, num: int) -> LabelSet:
        """An identity's label set (built on first use for CIDR identities)."""
        ls = self._labels.get(num)
        if ls is None:
            ls = self._labels[num] = LabelSet.of(self._source[num])
        return ls

    def all(self) -> list[int]:
        return [*self.cluster, *self.world]

    def inside(self, nets: Iterable[Network]) -> set[int]:
        """Identities whose prefix lies inside one of ``nets``."""
        out: set[int] = set()
        for net in nets:
            entries, starts = self._cidr[net.version], self._starts[net.version]
            lo, hi = int(net.network_address), int(net.broadcast_address)
            for i in range(bisect.bisect_left(starts, lo), bisect.bisect_right(starts, hi)):
                if entries[i][1] <= hi:
                    out.add(entries[i][2])
        return out

    def peers(self, entry: PeerRule, selects: Callable[[EndpointSelector, LabelSet], bool]) -> set[int] | None:
        """Identities the entry's L3 peers select; None means any peer.
        ``selects`` is the peer endpoint-selector semantics (resolve's)."""
        if entry.allows_all_peers:
            return None
        if entry.endpoints:
            out: set[int] = set()
            for sel in entry.endpoints:
                pool = self.all() if sel.names_source("reserved", "cidr") else list(self.cluster)
                out.update(n for n in pool if selects(sel, self.labels(n)))
            return out
        if entry.entities:
            out = set()
            for ent in entry.entities:
                if ent == ENTITY_WORLD:
                    out.update(self.world)
                elif ent == ENTITY_CLUSTER:
                    out.update(self.cluster)
                else:
                    out.update(n for n, ls in self.cluster.items() if entity_matches(ent, ls))
            return out
        nets = entry.cidr_prefixes()
        if self._by_label:
            wanted = frozenset(cidr_label(n) for n in nets)
            return {n for n in self.world if not wanted.isdisjoint(self.labels(n).strings)}
        return self.inside(nets)
