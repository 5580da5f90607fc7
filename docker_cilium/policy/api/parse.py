"""Parsing policy documents (``cilium policy import`` / ``PUT /policy``).

A policy document is a JSON array of rules, as in Cilium. Everything is
validated before anything is returned, and every error names the JSON path of
the offending element, e.g.
``[0].ingress[1].toPorts[0].ports[0].port: port 0 is out of range 1-65535``.
"""

from __future__ import annotations

import json
from typing import Any, Iterable

from docker_cilium import strictjson

from ._util import json_type
from .errors import PolicyValidationError
from .rule import Rule


def load_json(data: bytes | bytearray | str) -> Any:
    """Decode JSON, turning decoder errors into a line/column message."""
    if isinstance(data, (bytes, bytearray)):
        try:
            data = bytes(data).decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise PolicyValidationError("", f"policy is not valid UTF-8: {exc}") from None
    try:
        return strictjson.loads(data)
    except json.JSONDecodeError as exc:
        raise PolicyValidationError("", f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except strictjson.JSONError as exc:
        raise PolicyValidationError("", f"invalid JSON: {exc}") from None


def parse_rules(data: bytes | bytearray | str | list[Any]) -> list[Rule]:
    """Parse and validate a policy document (raw JSON or already decoded list).

    Raises :class:`PolicyValidationError` on the first problem found.
    """
    if isinstance(data, (bytes, bytearray, str)):
        data = load_json(data)
    if not isinstance(data, list):
        raise PolicyValidationError(
            "", f"a policy must be a JSON array of rules, got a JSON {json_type(data)} (wrap a single rule in [ ])"
        )
    return [Rule.from_json(item, f"[{i}]") for i, item in enumerate(data)]


def rules_to_list(rules: Iterable[Rule]) -> list[dict[str, Any]]:
    return [r.to_dict() for r in rules]


def dump_rules(rules: Iterable[Rule], indent: int | None = 2) -> str:
    """Rules back as the user's JSON shape (``cilium policy get``)."""
    return json.dumps(rules_to_list(rules), indent=indent)
