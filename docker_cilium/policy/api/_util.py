"""Small helpers shared by the policy API validators (JSON shape checks).

Every ``from_json`` in this package validates strictly: unknown fields are
errors, because a misspelt key (``fromEndpoint``) silently ignored would turn
an intended restriction into "allow" or "deny everything" without a word.
"""

from __future__ import annotations

import difflib
from typing import Any, Callable, Iterable, Mapping, TypeVar

from .errors import PolicyValidationError

T = TypeVar("T")


def json_type(value: Any) -> str:
    """Name of the JSON type of a decoded value, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "array"
    if isinstance(value, Mapping):
        return "object"
    return type(value).__name__


def field_path(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def index_path(path: str, i: int) -> str:
    return f"{path}[{i}]"


def expect_object(data: Any, path: str, what: str) -> Mapping[str, Any]:
    if type(data) is dict:  # what the decoder makes: no ABC check (100,000 rules)
        return data
    if not isinstance(data, Mapping):
        raise PolicyValidationError(path, f"{what} must be a JSON object, got {json_type(data)}")
    return data


def check_fields(
    data: Mapping[str, Any],
    path: str,
    allowed: Iterable[str],
    unsupported: Mapping[str, str] | None = None,
) -> None:
    """Reject unknown fields and fields docker-cilium deliberately does not support
    (``allowed`` and ``unsupported`` never share a name)."""
    if (allowed if isinstance(allowed, frozenset) else frozenset(allowed)).issuperset(data):
        return
    allowed = tuple(allowed)
    unsupported = unsupported or {}
    for key in data:
        if key in unsupported:
            raise PolicyValidationError(field_path(path, key), unsupported[key])
        if key not in allowed:
            hint = difflib.get_close_matches(str(key), allowed, n=1)
            suffix = f' (did you mean "{hint[0]}"?)' if hint else ""
            raise PolicyValidationError(path, f'unknown field "{str(key)[:80]}"{suffix}')


def get_list(data: Mapping[str, Any], key: str, path: str) -> list[Any]:
    """The list at ``data[key]``; absent or null counts as empty (as in Go)."""
    value = data.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise PolicyValidationError(field_path(path, key), f"must be a JSON array, got {json_type(value)}")
    return value


def expect_string(value: Any, path: str, what: str) -> str:
    if not isinstance(value, str):
        raise PolicyValidationError(path, f"{what} must be a string, got {json_type(value)}")
    return value


class FlatMemo:
    """Parsed values of small flat JSON objects, by content, so a document
    repeating one (a port, a label, a selector) validates it once. Only
    valid objects are stored, and their values are strings or null, which
    equal nothing but themselves: a hit is the value parsing would give
    (the path only ever names an error). Bounded: emptied when full."""

    def __init__(self, limit: int = 1 << 16) -> None:
        self.limit = limit
        self._d: dict[tuple[Any, ...], Any] = {}

    @staticmethod
    def key(data: Any) -> tuple[Any, ...] | None:
        """The object's items (None when it is no dict or holds containers)."""
        if type(data) is not dict:
            return None
        key = tuple(data.items())
        try:
            hash(key)
        except TypeError:
            return None
        return key

    def parsed(self, key: tuple[Any, ...] | None, parse: Callable[[], T]) -> T:
        """The value stored under ``key``, else ``parse()``'s (stored when it
        returns: an invalid object raises and is never stored)."""
        if key is None:
            return parse()
        hit = self._d.get(key)
        if hit is not None:
            return hit  # type: ignore[no-any-return]
        out = parse()
        if len(self._d) >= self.limit:
            self._d.clear()
        self._d[key] = out
        return out
