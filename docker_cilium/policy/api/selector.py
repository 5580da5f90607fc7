"""EndpointSelector: a Kubernetes LabelSelector over Cilium labels.

Labels are handled here as plain strings ``source:key=value`` (``reserved:host``
and ``cidr:10.0.0.0/8`` have an empty value). The identity package has a richer
``Labels`` type; the policy package deliberately only depends on the string
form so that both sides can evolve independently.

Selector keys follow Cilium: ``k8s:foo`` / ``container:id`` / ``reserved:host``
name a source and match only labels of that source; a key without a source
(or with ``any:``) matches labels of *any* source with that key. Terms AND;
``{}`` (no terms) selects everything.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from ._util import FlatMemo, check_fields, expect_object, expect_string, field_path, get_list, index_path, json_type
from .errors import PolicyValidationError

ANY_SOURCE = "any"
UNSPEC_SOURCE = "unspec"

OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")

_SELECTORS = FlatMemo()


def split_label(text: str, default_source: str = UNSPEC_SOURCE) -> tuple[str, str, str]:
    """Split ``source:key=value`` into its parts.

    The source ends at the first ``:`` only if that colon comes before any
    ``=`` (so ``foo=a:b`` is key ``foo`` with value ``a:b``). IPv6 CIDR labels
    such as ``cidr:f00d::/64`` therefore have key ``f00d::/64``.
    """
    colon = text.find(":")
    eq = text.find("=")
    if colon > 0 and (eq < 0 or colon < eq):
        source, rest = text[:colon], text[colon + 1 :]
    elif colon == 0:
        source, rest = default_source, text[1:]
    else:
        source, rest = default_source, text
    key, _, value = rest.partition("=")
    return source, key, value


def split_selector_key(key: str) -> tuple[str, str]:
    """``k8s:foo`` -> (``k8s``, ``foo``); ``foo`` -> (``any``, ``foo``)."""
    colon = key.find(":")
    if colon > 0:
        return key[:colon], key[colon + 1 :]
    return ANY_SOURCE, key.lstrip(":")


@dataclass(frozen=True)
class LabelSet:
    """An identity's labels, pre-indexed by key so selectors match quickly.

    Build it once per identity with :meth:`of`; every matcher in the policy
    package accepts either a ``LabelSet`` or any iterable of label strings.
    """

    strings: frozenset[str]
    by_key: Mapping[str, tuple[tuple[str, str], ...]] = field(compare=False, hash=False, repr=False)

    @classmethod
    def of(cls, labels: "LabelSet | Iterable[str]") -> "LabelSet":
        if isinstance(labels, LabelSet):
            return labels
        if isinstance(labels, str):
            labels = [labels]
        strings = frozenset(str(s) for s in labels)
        index: dict[str, list[tuple[str, str]]] = {}
        for s in strings:
            source, key, value = split_label(s)
            index.setdefault(key, []).append((source, value))
        return cls(strings, {k: tuple(v) for k, v in index.items()})

    def values(self, source: str, key: str) -> list[str]:
        """Values of labels with this key (and this source unless ``any``)."""
        return [v for s, v in self.by_key.get(key, ()) if source == ANY_SOURCE or s == source]

    def has(self, label: str) -> bool:
        """True if a label ``source:key=value`` (``any:`` allowed) is present."""
        source, key, value = split_label(label, ANY_SOURCE)
        return value in self.values(source, key)

    def __iter__(self):
        return iter(sorted(self.strings))

    def __len__(self) -> int:
        return len(self.strings)


@dataclass(frozen=True)
class SelectorRequirement:
    """One ``matchExpressions`` term."""

    key: str
    operator: str
    values: tuple[str, ...] = ()

    def matches(self, labels: LabelSet) -> bool:
        source, key = split_selector_key(self.key)
        present = labels.values(source, key)
        if self.operator == "In":
            return any(v in self.values for v in present)
        if self.operator == "NotIn":
            return not any(v in self.values for v in present)
        if self.operator == "Exists":
            return bool(present)
        if self.operator == "DoesNotExist":
            return not present
        raise AssertionError(f"unvalidated operator {self.operator!r}")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"key": self.key, "operator": self.operator}
        if self.values:
            out["values"] = list(self.values)
        return out

    @classmethod
    def from_json(cls, data: Any, path: str) -> "SelectorRequirement":
        data = expect_object(data, path, "a match expression")
        check_fields(data, path, ("key", "operator", "values"))
        if "key" not in data:
            raise PolicyValidationError(path, "key is required")
        key = expect_string(data["key"], field_path(path, "key"), "key")
        _check_key(key, field_path(path, "key"))
        op = data.get("operator")
        if op not in OPERATORS:
            raise PolicyValidationError(
                field_path(path, "operator"),
                f"invalid operator {json.dumps(op)}, must be one of In, NotIn, Exists, DoesNotExist",
            )
        raw_values = get_list(data, "values", path)
        values = tuple(
            expect_string(v, index_path(field_path(path, "values"), i), "value") for i, v in enumerate(raw_values)
        )
        if op in ("In", "NotIn") and not values:
            raise PolicyValidationError(field_path(path, "values"), f"operator {op} needs at least one value")
        if op in ("Exists", "DoesNotExist") and values:
            raise PolicyValidationError(field_path(path, "values"), f"operator {op} takes no values")
        return cls(key, op, values)


def _check_key(key: str, path: str) -> None:
    source, name = split_selector_key(key)
    if not name or not source:
        raise PolicyValidationError(path, f"invalid label key {json.dumps(key)}")


@dataclass(frozen=True)
class EndpointSelector:
    """Kubernetes-style LabelSelector (matchLabels AND matchExpressions)."""

    match_labels: tuple[tuple[str, str], ...] = ()
    match_expressions: tuple[SelectorRequirement, ...] = ()

    def keys(self) -> list[str]:
        return [k for k, _ in self.match_labels] + [e.key for e in self.match_expressions]

    def names_source(self, *sources: str) -> bool:
        """True if some term names one of these label sources explicitly."""
        return any(split_selector_key(k)[0] in sources for k in self.keys())

    def matches(self, labels: "LabelSet | Iterable[str]") -> bool:
        ls = LabelSet.of(labels)
        for key, value in self.match_labels:
            source, name = split_selector_key(key)
            if value not in ls.values(source, name):
                return False
        return all(e.matches(ls) for e in self.match_expressions)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.match_labels:
            out["matchLabels"] = dict(self.match_labels)
        if self.match_expressions:
            out["matchExpressions"] = [e.to_dict() for e in self.match_expressions]
        return out

    def __str__(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_json(cls, data: Any, path: str) -> "EndpointSelector":
        # The common selector, only ``matchLabels``, is memoized by its labels.
        ml = data.get("matchLabels") if type(data) is dict and len(data) == 1 else None
        return _SELECTORS.parsed(_SELECTORS.key(ml), lambda: cls._parse(data, path))

    @classmethod
    def _parse(cls, data: Any, path: str) -> "EndpointSelector":
        if data is None:
            raise PolicyValidationError(path, "selector must not be null")
        data = expect_object(data, path, "a label selector")
        check_fields(data, path, ("matchLabels", "matchExpressions"))
        ml_path = field_path(path, "matchLabels")
        raw_ml = data.get("matchLabels")
        pairs: list[tuple[str, str]] = []
        if raw_ml is not None:
            raw_ml = expect_object(raw_ml, ml_path, "matchLabels")
            for key, value in raw_ml.items():
                _check_key(key, ml_path)
                if not isinstance(value, str):
                    raise PolicyValidationError(
                        field_path(ml_path, key), f"label value must be a string, got {json_type(value)}"
                    )
                pairs.append((key, value))
        me_path = field_path(path, "matchExpressions")
        exprs = tuple(
            SelectorRequirement.from_json(e, index_path(me_path, i))
            for i, e in enumerate(get_list(data, "matchExpressions", path))
        )
        return cls(tuple(pairs), exprs)
