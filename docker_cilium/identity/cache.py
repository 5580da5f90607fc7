"""The identity cache: every identity a rule may select, with its labels.

Three sources make it up, as in Cilium's ``identity/cache``: the reserved
identities (fixed numbers), those the cluster allocated (the allocator's
watched cache) and the node-local ones (CIDR identities, from the ipcache).
The API lists it (``cilium identity list``), and policy resolution and trace
match selectors against it.
"""

from __future__ import annotations

from typing import Iterator, Mapping, Protocol

from . import reserved
from .allocator import Identity, IdentityAllocator
from .labels import Labels


class LocalIdentities(Protocol):
    """Node-local identities and their label strings (``ipcache.IPCache``)."""

    def local_identities(self) -> dict[int, list[str]]: ...
    def local_identity(self, num: int) -> list[str] | None: ...
    def cidr_identities(self) -> dict[str, int]: ...
    def cidr_labels(self, prefix: str) -> list[str]: ...


class IdentitySnapshot(Mapping[int, list[str]]):
    """Identity number -> label strings, fixed at one moment.

    Thousands of CIDR identities carry ~33 labels each, so their labels are
    produced only when asked for; ``cluster`` (reserved and allocated) and
    ``cidrs`` (prefix -> number) let policy resolution select CIDR identities
    by prefix without building label sets at all."""

    def __init__(self, cluster: dict[int, list[str]], cidrs: dict[str, int], local: LocalIdentities) -> None:
        self.cluster = cluster
        self.cidrs = cidrs
        self._local = local
        self._prefix_of = {num: prefix for prefix, num in cidrs.items() if num not in cluster}
        self.index: object | None = None  # policy resolution's index over this snapshot, built once

    def __getitem__(self, num: int) -> list[str]:
        if num in self.cluster:
            return self.cluster[num]
        return self._local.cidr_labels(self._prefix_of[num])

    def __iter__(self) -> Iterator[int]:
        yield from self.cluster
        yield from self._prefix_of

    def __len__(self) -> int:
        return len(self.cluster) + len(self._prefix_of)


class IdentityCache:
    def __init__(self, allocator: IdentityAllocator, local: LocalIdentities) -> None:
        self.allocator = allocator
        self.local = local

    def identity_labels(self, cidrs: Mapping[str, int] | None = None) -> IdentitySnapshot:
        """Identity number -> label strings: reserved, cluster-allocated, local;
        ``cidrs`` (prefix -> number) stands for the local CIDR identities, e.g.
        those a policy change is about to allocate."""
        out: dict[int, list[str]] = {}
        for num, labels in reserved.all_reserved().items():
            out[num] = labels.to_strings()
        for ident in self.allocator.cached():
            out[ident.id] = ident.labels.to_strings()
        local = dict(cidrs) if cidrs is not None else self.local.cidr_identities()
        return IdentitySnapshot(out, local, self.local)

    def identities(self) -> list[Identity]:
        """The same set as :meth:`identity_labels`, as identities, by number."""
        found = {num: Identity(num, labels) for num, labels in reserved.all_reserved().items()}
        for ident in self.allocator.cached():
            found[ident.id] = ident
        for num, strings in self.local.local_identities().items():
            found[num] = Identity(num, Labels.parse(strings))
        return [found[k] for k in sorted(found)]

    def identity(self, num: int) -> Identity | None:
        """One identity of :meth:`identities`, without building the others
        (thousands of CIDR identities carry ~33 labels each)."""
        local = self.local.local_identity(num)
        if local is not None:
            return Identity(num, Labels.parse(local))
        cached = self.allocator.cached_identity(num)
        if cached is not None:
            return cached
        labels = reserved.labels_for(num)
        return Identity(num, labels) if labels is not None else None
