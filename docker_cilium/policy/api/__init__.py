"""User-facing policy types and their validation (Cilium's ``pkg/policy/api``).

Pure data + validation: nothing here evaluates policy (see ``policy.resolve``).
"""

from .cidr import CIDR, CIDRRule, cidr_identity_labels, cidr_label, subtract
from .entities import ENTITIES, entity_matches
from .errors import PolicyValidationError
from .l4 import MAX_PORTS, PortProtocol, PortRule
from .parse import dump_rules, load_json, parse_rules
from .rule import EgressRule, IngressRule, PeerRule, Rule, RuleLabel
from .selector import EndpointSelector, LabelSet, SelectorRequirement, split_label, split_selector_key

__all__ = [
    "CIDR",
    "CIDRRule",
    "ENTITIES",
    "MAX_PORTS",
    "EgressRule",
    "EndpointSelector",
    "IngressRule",
    "LabelSet",
    "PeerRule",
    "PolicyValidationError",
    "PortProtocol",
    "PortRule",
    "Rule",
    "RuleLabel",
    "SelectorRequirement",
    "cidr_identity_labels",
    "cidr_label",
    "dump_rules",
    "entity_matches",
    "load_json",
    "parse_rules",
    "split_label",
    "split_selector_key",
    "subtract",
]
