"""Cluster nodes (Cilium's ``pkg/node``): the registry in the cluster store and range claims."""

from .claims import RangeClaims, RangesExhausted
from .registry import NodeObserver, NodeRegistry
from .types import Node, NodeDecodeError

__all__ = ["Node", "NodeDecodeError", "NodeObserver", "NodeRegistry", "RangeClaims", "RangesExhausted"]
