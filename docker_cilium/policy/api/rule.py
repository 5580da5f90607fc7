"""Rule, IngressRule, EgressRule: the user-facing policy rule types.

These mirror Cilium's ``pkg/policy/api`` JSON shape exactly so that existing
Cilium policy files load unchanged, and ``Rule.to_dict()`` gives back the same
shape for ``cilium policy get``. They carry no evaluation logic: see
``docker_cilium.policy.resolve`` for that.

Ingress and egress entries share one implementation (``PeerRule``) whose JSON
names differ only by prefix (``fromEndpoints`` vs ``toEndpoints``); the Python
attributes use the neutral names ``endpoints``, ``requires``, ``cidr``,
``cidr_set``, ``entities`` and ``to_ports``.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Mapping

from ._util import (
    FlatMemo,
    check_fields,
    expect_object,
    expect_string,
    field_path,
    get_list,
    index_path,
)
from .cidr import CIDR, CIDRRule
from .entities import ENTITY_ALL, parse_entity
from .errors import PolicyValidationError
from .l4 import PortRule
from .l7 import PortRuleHTTP
from .selector import UNSPEC_SOURCE, EndpointSelector, split_label

#: Compact JSON; one encoder for every rule (``json.dumps`` with separators builds one per call).
compact_json = json.JSONEncoder(separators=(",", ":")).encode

_LABELS = FlatMemo()

K8S_CLOUD = "not supported by docker-cilium (Kubernetes/cloud feature)"


@dataclass(frozen=True)
class PeerRule:
    """One ingress or egress entry. Peer kinds (endpoints, CIDR, CIDR set,
    entities) may not be combined in one entry, as in Cilium; ``requires`` and
    ``to_ports`` combine with any of them."""

    endpoints: tuple[EndpointSelector, ...] = ()
    requires: tuple[EndpointSelector, ...] = ()
    cidr: tuple[CIDR, ...] = ()
    cidr_set: tuple[CIDRRule, ...] = ()
    entities: tuple[str, ...] = ()
    to_ports: tuple[PortRule, ...] = ()

    PREFIX: ClassVar[str] = ""
    DIRECTION: ClassVar[str] = ""
    UNSUPPORTED: ClassVar[Mapping[str, str]] = {}

    # --- derived views -------------------------------------------------
    @property
    def has_l3(self) -> bool:
        """True if the entry names its peers (otherwise any peer is meant)."""
        return bool(self.endpoints or self.cidr or self.cidr_set or self.entities)

    @property
    def allows_all_peers(self) -> bool:
        return not self.has_l3 or ENTITY_ALL in self.entities

    def l4_pairs(self) -> frozenset[tuple[int, int]] | None:
        """(port, proto) pairs allowed, or None when the entry has no toPorts
        (all ports, and ICMP, are allowed)."""
        if not self.to_ports:
            return None
        return frozenset().union(*(pr.l4_pairs() for pr in self.to_ports))

    def l7_by_pair(self) -> dict[tuple[int, int], tuple[PortRuleHTTP, ...] | None]:
        """For each (port, proto) of ``toPorts``: the HTTP requests allowed
        there, the union over the elements naming it; None (every connection)
        if one of them has no L7 rules."""
        out: dict[tuple[int, int], tuple[PortRuleHTTP, ...] | None] = {}
        for pr in self.to_ports:
            for pair in pr.l4_pairs():
                prev = out.get(pair, ())
                if prev is None or pr.rules is None:
                    out[pair] = None
                else:
                    out[pair] = tuple(sorted(set(prev) | set(pr.rules)))
        return out

    def cidr_prefixes(self) -> list[Any]:
        """Networks this entry's CIDR peers cover (except prefixes subtracted)."""
        nets = [c.network for c in self.cidr]
        for cs in self.cidr_set:
            nets.extend(cs.allowed_prefixes())
        return nets

    # --- JSON ----------------------------------------------------------
    @classmethod
    @functools.cache
    def json_fields(cls) -> frozenset[str]:
        return frozenset(cls.json_names().values())

    @classmethod
    @functools.cache
    def json_names(cls) -> dict[str, str]:
        p = cls.PREFIX
        return {
            "endpoints": f"{p}Endpoints",
            "requires": f"{p}Requires",
            "cidr": f"{p}CIDR",
            "cidr_set": f"{p}CIDRSet",
            "entities": f"{p}Entities",
            "to_ports": "toPorts",
        }

    def to_dict(self) -> dict[str, Any]:
        n = self.json_names()
        out: dict[str, Any] = {}
        if self.endpoints:
            out[n["endpoints"]] = [s.to_dict() for s in self.endpoints]
        if self.requires:
            out[n["requires"]] = [s.to_dict() for s in self.requires]
        if self.cidr:
            out[n["cidr"]] = [c.to_json() for c in self.cidr]
        if self.cidr_set:
            out[n["cidr_set"]] = [c.to_dict() for c in self.cidr_set]
        if self.entities:
            out[n["entities"]] = list(self.entities)
        if self.to_ports:
            out["toPorts"] = [p.to_dict() for p in self.to_ports]
        return out

    @classmethod
    def from_json(cls, data: Any, path: str) -> "PeerRule":
        data = expect_object(data, path, f"an {cls.DIRECTION} rule")
        n = cls.json_names()
        check_fields(data, path, cls.json_fields(), cls.UNSUPPORTED)

        def items(attr: str, parse: Callable[[Any, str], Any]) -> tuple[Any, ...]:
            key = n[attr]
            if data.get(key) is None:  # most entries name one or two of the six
                return ()
            base = field_path(path, key)
            return tuple([parse(v, f"{base}[{i}]") for i, v in enumerate(get_list(data, key, path))])

        endpoints = items("endpoints", EndpointSelector.from_json)
        requires = items("requires", EndpointSelector.from_json)
        cidr = items("cidr", CIDR.from_json)
        cidr_set = items("cidr_set", CIDRRule.from_json)
        entities = items("entities", parse_entity)
        to_ports = items("to_ports", PortRule.from_json)

        l3_kinds = [
            n[a] for a, v in (("endpoints", endpoints), ("cidr", cidr), ("cidr_set", cidr_set), ("entities", entities)) if v
        ]
        if len(l3_kinds) > 1:
            raise PolicyValidationError(
                path,
                f"combining {' and '.join(l3_kinds)} in one entry is not supported (use separate entries)",
            )
        return cls(endpoints, requires, cidr, cidr_set, entities, to_ports)


@dataclass(frozen=True)
class IngressRule(PeerRule):
    """An ``ingress`` entry: who may connect *to* the selected endpoints."""

    PREFIX: ClassVar[str] = "from"
    DIRECTION: ClassVar[str] = "ingress"
    UNSUPPORTED: ClassVar[Mapping[str, str]] = {
        "fromGroups": K8S_CLOUD,
        "fromNodes": "not supported by docker-cilium (node selectors)",
        "icmps": "ICMP rules are not supported by docker-cilium",
    }


@dataclass(frozen=True)
class EgressRule(PeerRule):
    """An ``egress`` entry: where the selected endpoints may connect to."""

    PREFIX: ClassVar[str] = "to"
    DIRECTION: ClassVar[str] = "egress"
    UNSUPPORTED: ClassVar[Mapping[str, str]] = {
        "toServices": K8S_CLOUD,
        "toFQDNs": K8S_CLOUD,
        "toGroups": K8S_CLOUD,
        "toNodes": "not supported by docker-cilium (node selectors)",
        "icmps": "ICMP rules are not supported by docker-cilium",
    }


@dataclass(frozen=True)
class RuleLabel:
    """A label naming a rule (used by ``policy get/delete``). JSON accepts
    ``{"key","value","source"}`` objects or ``"source:key=value"`` strings; a
    missing source is ``unspec`` (as Cilium prints it back)."""

    key: str
    value: str = ""
    source: str = UNSPEC_SOURCE

    def __str__(self) -> str:
        return self.text

    @functools.cached_property
    def text(self) -> str:
        """``source:key=value``, made once (parsed labels are shared by the rules naming them)."""
        return f"{self.source}:{self.key}={self.value}" if self.value else f"{self.source}:{self.key}"

    def to_dict(self) -> dict[str, str]:
        out = {"key": self.key}
        if self.value:
            out["value"] = self.value
        out["source"] = self.source
        return out

    @classmethod
    def parse(cls, text: str) -> "RuleLabel":
        source, key, value = split_label(text)
        return cls(key, value, source)

    @classmethod
    def from_json(cls, data: Any, path: str) -> "RuleLabel":
        key = (data,) if type(data) is str else _LABELS.key(data)
        return _LABELS.parsed(key, lambda: cls._parse(data, path))

    @classmethod
    def _parse(cls, data: Any, path: str) -> "RuleLabel":
        if isinstance(data, str):
            lbl = cls.parse(data)
            if not lbl.key:
                raise PolicyValidationError(path, f"invalid label {json.dumps(data)}")
            return lbl
        data = expect_object(data, path, "a label")
        check_fields(data, path, ("key", "value", "source"))
        if "key" not in data:
            raise PolicyValidationError(path, "key is required")
        key = expect_string(data.get("key"), field_path(path, "key"), "key")
        if not key:
            raise PolicyValidationError(field_path(path, "key"), "key must not be empty")
        value = expect_string(data.get("value", ""), field_path(path, "value"), "value")
        source = expect_string(data.get("source", "") or UNSPEC_SOURCE, field_path(path, "source"), "source")
        return cls(key, value, source)


@dataclass(frozen=True)
class Rule:
    """A policy rule: which endpoints it applies to, and what they may do."""

    endpoint_selector: EndpointSelector
    ingress: tuple[IngressRule, ...] = ()
    egress: tuple[EgressRule, ...] = ()
    labels: tuple[RuleLabel, ...] = ()
    description: str = ""

    RULE_UNSUPPORTED: ClassVar[Mapping[str, str]] = {
        "ingressDeny": "deny policies are not supported by docker-cilium",
        "egressDeny": "deny policies are not supported by docker-cilium",
        "nodeSelector": "host policies (nodeSelector) are not supported by docker-cilium",
    }

    def section(self, direction: str) -> tuple[PeerRule, ...]:
        if direction == "ingress":
            return self.ingress
        if direction == "egress":
            return self.egress
        raise ValueError(f"unknown direction {direction!r}")

    @functools.cached_property
    def label_strings(self) -> tuple[str, ...]:
        """Made once per rule (every import's agent event lists the labels of all the rules it added)."""
        return tuple([lbl.text for lbl in self.labels])

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"endpointSelector": self.endpoint_selector.to_dict()}
        if self.ingress:
            out["ingress"] = [e.to_dict() for e in self.ingress]
        if self.egress:
            out["egress"] = [e.to_dict() for e in self.egress]
        if self.labels:
            out["labels"] = [lbl.to_dict() for lbl in self.labels]
        if self.description:
            out["description"] = self.description
        return out

    @functools.cached_property
    def compact_json(self) -> str:
        """The persisted form (compact :meth:`to_dict`), made once per rule:
        a repository persisted again after an import re-serializes nothing old."""
        return compact_json(self.to_dict())

    @classmethod
    def from_json(cls, data: Any, path: str = "") -> "Rule":
        data = expect_object(data, path, "a rule")
        check_fields(data, path, ("endpointSelector", "ingress", "egress", "labels", "description"), cls.RULE_UNSUPPORTED)
        if data.get("endpointSelector") is None:
            raise PolicyValidationError(path, "endpointSelector is required")
        selector = EndpointSelector.from_json(data["endpointSelector"], field_path(path, "endpointSelector"))

        def section(key: str, typ: type[PeerRule]) -> tuple[Any, ...]:
            if data.get(key) is None:
                return ()
            base = field_path(path, key)
            return tuple([typ.from_json(v, f"{base}[{i}]") for i, v in enumerate(get_list(data, key, path))])

        ingress = section("ingress", IngressRule)
        egress = section("egress", EgressRule)
        lbl_path = field_path(path, "labels")
        labels = tuple(RuleLabel.from_json(v, index_path(lbl_path, i)) for i, v in enumerate(get_list(data, "labels", path)))
        description = data.get("description")
        if description is None:
            description = ""
        description = expect_string(description, field_path(path, "description"), "description")
        return cls(selector, ingress, egress, labels, description)  # type: ignore[arg-type]
