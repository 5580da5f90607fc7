"""The identity cache: every identity a rule may select, with its labels.

Three sources make it up, as in Cilium's ``identity/cache``: the reserved
identities (fixed numbers), those the cluster allocated (the allocator's
watched cache) and the node-local ones (CIDR identities, from the ipcache).
The API lists it (``cilium identity list``), and policy resolution and trace
match selectors against it.
"""

from __future__ import annotations

from typing import Protocol

from . import reserved
from .allocator import Identity, IdentityAllocator
from .labels import Labels


class LocalIdentities(Protocol):
    """Node-local identities and their label strings (``ipcache.IPCache``)."""

    def local_identities(self) -> dict[int, list[str]]: ...


class IdentityCache:
    def __init__(self, allocator: IdentityAllocator, local: LocalIdentities) -> None:
        self.allocator = allocator
        self.local = local

    def identity_labels(self) -> dict[int, list[str]]:
        """Identity number -> label strings: reserved, cluster-allocated, local."""
        out: dict[int, list[str]] = {}
        for num, labels in reserved.all_reserved().items():
            out[num] = labels.to_strings()
        for ident in self.allocator.cached():
            out[ident.id] = ident.labels.to_strings()
        out.update(self.local.local_identities())
        return out

    def identities(self) -> list[Identity]:
        """The same set as :meth:`identity_labels`, as identities, by number."""
        found = {num: Identity(num, labels) for num, labels in reserved.all_reserved().items()}
        for ident in self.allocator.cached():
            found[ident.id] = ident
        for num, strings in self.local.local_identities().items():
            found[num] = Identity(num, Labels.parse(strings))
        return [found[k] for k in sorted(found)]

    def identity(self, num: int) -> Identity | None:
        return next((i for i in self.identities() if i.id == num), None)
