"""Parsing policy documents (``cilium policy import`` / ``PUT /policy``).

A policy document is a JSON array of rules, as in Cilium. Everything is
validated before anything is returned, and every error names the JSON path of
the offending element, e.g.
``[0].ingress[1].toPorts[0].ports[0].port: port 0 is out of range 1-65535``.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Iterable, Iterator

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


_WS = " \t\n\r"


def _skip_ws(text: str, i: int) -> int:
    while i < len(text) and text[i] in _WS:
        i += 1
    return i


def iter_json_array(data: bytes | bytearray | str) -> Iterator[Any]:
    """Decode a JSON array one element at a time, so a multi-megabyte policy
    is decoded in steps the caller can interleave with other work. Errors are
    :func:`load_json`'s; a document that is not an array is refused."""
    if isinstance(data, (bytes, bytearray)):
        try:
            data = bytes(data).decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise PolicyValidationError("", f"policy is not valid UTF-8: {exc}") from None
    text = data
    raw = text.encode("utf-8", "surrogatepass")
    i = _skip_ws(text, 0)
    if text[i:i + 1] != "[" or strictjson.has_surrogate_escape(raw):
        yield from rule_items(text)  # load_json's whole-document checks and errors
        return
    try:
        strictjson.check_depth(raw)
    except strictjson.JSONError as exc:
        raise PolicyValidationError("", f"invalid JSON: {exc}") from None
    decoder = strictjson.decoder()
    try:
        i = _skip_ws(text, i + 1)
        if text[i:i + 1] == "]":
            i += 1
        else:
            while True:
                item, i = decoder.raw_decode(text, i)
                yield item
                i = _skip_ws(text, i)
                if text[i:i + 1] == ",":
                    i = _skip_ws(text, i + 1)
                elif text[i:i + 1] == "]":
                    i += 1
                    break
                else:
                    raise json.JSONDecodeError("Expecting ',' delimiter", text, i)
        i = _skip_ws(text, i)
        if i < len(text):
            raise json.JSONDecodeError("Extra data", text, i)
    except json.JSONDecodeError as exc:
        raise PolicyValidationError("", f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except strictjson.JSONError as exc:
        raise PolicyValidationError("", f"invalid JSON: {exc}") from None
    except ValueError:  # int() refused a literal with too many digits
        raise PolicyValidationError(
            "", f"invalid JSON: an integer has more than {sys.get_int_max_str_digits()} digits") from None


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


def parse_rules(data: bytes | bytearray | str | list[Any]) -> list[Rule]:
    """Parse and validate a policy document (raw JSON or already decoded list).

    Raises :class:`PolicyValidationError` on the first problem found.
    """
    return [Rule.from_json(item, f"[{i}]") for i, item in enumerate(rule_items(data))]


def rules_to_list(rules: Iterable[Rule]) -> list[dict[str, Any]]:
    return [r.to_dict() for r in rules]


def dump_rules(rules: Iterable[Rule], indent: int | None = 2) -> str:
    """Rules back as the user's JSON shape (``cilium policy get``)."""
    return json.dumps(rules_to_list(rules), indent=indent)
