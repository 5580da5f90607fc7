"""Security identities: numbers standing for label sets, shared cluster-wide."""

from .allocator import Identity, IdentityAllocationError, IdentityAllocator
from .labels import Label, Labels, from_docker

__all__ = ["Identity", "IdentityAllocationError", "IdentityAllocator", "Label", "Labels", "from_docker"]
