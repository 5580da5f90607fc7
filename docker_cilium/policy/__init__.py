"""Policy: user-facing rule types (``api``), the rule ``repository`` and
``resolve`` (repository -> per-endpoint policy-map entries, and trace).

Pure Python: no kernel, HTTP or BPF maps here. Identity labels cross this
boundary as plain ``source:key=value`` strings.
"""

from .api import PolicyValidationError, Rule, parse_rules
from .repository import PolicyRepositoryError, Repository
from .resolve import (
    ENFORCEMENT_MODES,
    RESERVED_IDENTITIES,
    EndpointPolicy,
    PolicyEntry,
    cidr_identity_labels,
    cidr_prefixes,
    parse_enforcement,
    resolve,
    trace,
)

__all__ = [
    "ENFORCEMENT_MODES",
    "RESERVED_IDENTITIES",
    "EndpointPolicy",
    "PolicyEntry",
    "PolicyRepositoryError",
    "PolicyValidationError",
    "Repository",
    "Rule",
    "cidr_identity_labels",
    "cidr_prefixes",
    "parse_enforcement",
    "parse_rules",
    "resolve",
    "trace",
]
