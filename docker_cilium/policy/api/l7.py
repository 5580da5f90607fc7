"""L7 rules of a ``toPorts`` element: ``rules.http[]`` (Cilium's ``PortRuleHTTP``).

CONTRACT (written before the L7 work was split): the dataclass's fields and
``compile_ere`` are what the proxy uses; validation lives in ``from_json``.

Each of ``method``, ``path`` and ``host`` is a POSIX extended regular
expression matched against the WHOLE value (Cilium anchors them); an empty
one matches anything. ``headers`` are ``"Name: value"`` strings that must all
be present in the request (name case-insensitive, value exact); a bare
``"Name"`` only requires the header to be present.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, order=True)
class PortRuleHTTP:
    """One allowed kind of request. All fields empty = every request."""

    method: str = ""
    path: str = ""
    host: str = ""
    headers: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        """Cilium's JSON: only the fields that are set."""
        out: dict[str, Any] = {}
        if self.method:
            out["method"] = self.method
        if self.path:
            out["path"] = self.path
        if self.host:
            out["host"] = self.host
        if self.headers:
            out["headers"] = list(self.headers)
        return out

    @classmethod
    def from_json(cls, data: Any, path: str) -> "PortRuleHTTP":
        raise NotImplementedError  # l7policy helper


def compile_ere(pattern: str) -> re.Pattern[str]:
    """``pattern`` (POSIX ERE) as a Python pattern to be used with ``fullmatch``."""
    return re.compile(pattern)
