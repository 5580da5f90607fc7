"""Parsing policy documents (``cilium policy import`` / ``PUT /policy``).

A policy document is a JSON array of rules, as in Cilium. Everything is
validated before anything is returned, and every error names the JSON path of
the offending element, e.g.
``[0].ingress[1].toPorts[0].ports[0].port: port 0 is out of range 1-65535``.
"""

from __future__ import annotations

import contextlib
import json
import textwrap
from typing import Any, Generator, Iterable, Iterator

from docker_cilium import strictjson

from ._util import json_type
from .errors import PolicyValidationError
from .rule import Rule, compact_json


@contextlib.contextmanager
def _as_policy_errors() -> Iterator[None]:
    """strictjson's errors as PolicyValidationError (a decoder error with its line and column)."""
    try:
        yield
    except strictjson.NotAnArray as exc:
        raise not_an_array(exc.value) from None
    except json.JSONDecodeError as exc:
        raise PolicyValidationError("", f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except strictjson.JSONError as exc:
        raise PolicyValidationError("", f"invalid JSON: {exc}") from None


def load_json(data: bytes | bytearray | str) -> Any:
    """Decode a JSON document (strictjson's bounds) or raise PolicyValidationError."""
    with _as_policy_errors():
        return strictjson.loads(data)


def iter_json_array(data: bytes | bytearray | str) -> Iterator[Any]:
    """A policy document's rule items decoded one at a time (strictjson.iter_array),
    so a multi-megabyte policy is decoded in steps the caller can interleave
    with other work; errors as :func:`load_json`'s."""
    with _as_policy_errors():
        yield from strictjson.iter_array(data)


def not_an_array(value: Any) -> PolicyValidationError:
    return PolicyValidationError(
        "", f"a policy must be a JSON array of rules, got a JSON {json_type(value)} (wrap a single rule in [ ])")


def rule_items(data: bytes | bytearray | str | list[Any]) -> list[Any]:
    """A policy document's rule items, still unvalidated (raw JSON or decoded)."""
    if isinstance(data, (bytes, bytearray, str)):
        data = load_json(data)
    if not isinstance(data, list):
        raise not_an_array(data)
    return data


def rule_from_item(item: Any, path: str) -> Rule:
    """One decoded rule, validated; its persisted JSON (``compact_json``) is
    the item as given, encoded in C: it parses back to the same rule, and
    rebuilding it from the parsed form cost more than the parse's validation."""
    rule = Rule.from_json(item, path)
    rule.__dict__["compact_json"] = compact_json(item)  # the cached_property's slot
    return rule


def parse_rules(data: bytes | bytearray | str | list[Any]) -> list[Rule]:
    """Parse and validate a policy document (raw JSON or already decoded list).

    Raises :class:`PolicyValidationError` on the first problem found.
    """
    return [rule_from_item(item, f"[{i}]") for i, item in enumerate(rule_items(data))]


def dump_rules_steps(rules: Iterable[Rule]) -> Generator[None, None, str]:
    """:func:`dump_rules`, yielding after each rule (``Turns.drive`` runs it on the loop)."""
    parts = []
    for rule in rules:
        parts.append(textwrap.indent(json.dumps(rule.to_dict(), indent=2), "  "))
        yield
    return "[\n" + ",\n".join(parts) + "\n]" if parts else "[]"


def dump_rules(rules: Iterable[Rule]) -> str:
    """Rules back as the user's JSON shape, indented as Cilium's JSONMarshalRules
    (``cilium policy get``); the same text as ``json.dumps(..., indent=2)``."""
    steps = dump_rules_steps(rules)
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
