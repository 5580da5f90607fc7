"""L7 rules of a ``toPorts`` element: ``rules.http[]`` (Cilium's ``PortRuleHTTP``).

CONTRACT (written before the L7 work was split): the dataclass's fields and
``compile_ere`` are what the proxy uses; validation lives in ``from_json``.

Each of ``method``, ``path`` and ``host`` is a POSIX extended regular
expression matched against the WHOLE value (Cilium anchors them); an empty
one matches anything. ``headers`` are ``"Name: value"`` strings that must all
be present in the request (name case-insensitive, value exact); a bare
``"Name"`` only requires the header to be present. The name ends at the
first ``:``; the value is the rest, trimmed (:func:`parse_header`).
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass, field
from typing import Any, Protocol

import re2

from ._util import check_fields, expect_object, expect_string, field_path, get_list, index_path
from .ere import EREError, translate
from .errors import PolicyValidationError

#: Longest regex accepted (a policy, not a program), and most headers per rule.
MAX_PATTERN = 1024
MAX_HEADERS = 64
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


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

    def __str__(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_json(cls, data: Any, path: str) -> "PortRuleHTTP":
        """Validated strictly: every regex must be a valid ERE (the proxy
        compiles them with :func:`compile_ere`), every header "Name[: value]"
        with a valid HTTP field name."""
        data = expect_object(data, path, "an HTTP rule")
        check_fields(data, path, ("method", "path", "host", "headers"),
                     {"headerMatches": "headerMatches is not supported by docker-cilium (use headers)"})
        regexes: dict[str, str] = {}
        for name in ("method", "path", "host"):
            value = data.get(name)
            if value is None:
                continue
            fpath = field_path(path, name)
            value = expect_string(value, fpath, name)
            check_ere(value, fpath)
            regexes[name] = value
        hpath = field_path(path, "headers")
        raw = get_list(data, "headers", path)
        if len(raw) > MAX_HEADERS:
            raise PolicyValidationError(hpath, f"too many headers ({len(raw)}), at most {MAX_HEADERS}")
        headers = []
        for i, h in enumerate(raw):
            ipath = index_path(hpath, i)
            h = expect_string(h, ipath, "a header")
            try:
                parse_header(h)
            except ValueError as exc:
                raise PolicyValidationError(ipath, str(exc)) from None
            headers.append(h)
        return cls(headers=tuple(headers), **regexes)


def parse_header(header: str) -> tuple[str, str | None]:
    """``"Name: value"`` -> ("name", "value"); ``"Name"`` -> ("name", None).
    The name is lower-cased (HTTP field names are case-insensitive)."""
    name, sep, value = header.partition(":")
    name = name.strip()
    value = value.strip() if sep else None
    if not _TOKEN.fullmatch(name):
        raise ValueError(f'invalid header {json.dumps(header)}: must be "Name" or "Name: value" '
                         "with a valid HTTP field name")
    if value is not None and any(c in value for c in "\r\n\0"):  # never in a request's value
        raise ValueError(f"invalid header {json.dumps(header)}: the value contains a control character")
    return name.lower(), value


def check_ere(pattern: str, path: str) -> None:
    """Raise PolicyValidationError at ``path`` unless ``pattern`` is a valid ERE."""
    if len(pattern) > MAX_PATTERN:
        raise PolicyValidationError(path, f"regular expression too long ({len(pattern)} characters, "
                                          f"at most {MAX_PATTERN})")
    try:
        compile_ere(pattern)
    except ValueError as exc:
        raise PolicyValidationError(path, f"invalid regular expression {json.dumps(pattern)}: {exc}") from None


class FullMatcher(Protocol):
    """A compiled pattern: ``fullmatch`` is all the proxy calls."""

    def fullmatch(self, text: str) -> object | None: ...


def _re2_options() -> re2.Options:
    opts = re2.Options()
    opts.dot_nl = True          # ERE's "." matches a newline too
    opts.log_errors = False     # a refused pattern is a PolicyValidationError, not stderr noise
    opts.never_capture = True
    return opts


_OPTIONS = _re2_options()


@functools.lru_cache(maxsize=4096)
def compile_ere(pattern: str) -> FullMatcher:
    """``pattern`` (POSIX ERE) compiled by RE2, to be used with ``fullmatch``.

    RE2 matches in time linear in the subject whatever the pattern: a
    backtracking engine would let a client's crafted path stall the proxy
    on a pattern as innocent-looking as ``(a+)+$``, as Go's regexp (RE2)
    spares Cilium. An empty pattern matches anything (an unset field of a
    rule). Raises ``ValueError`` (``ere.EREError``) with the reason and
    position when the pattern is not a valid ERE."""
    try:
        return re2.compile(translate(pattern) if pattern else ".*", _OPTIONS)
    except EREError:
        raise
    except re2.error as exc:  # a translation RE2 still refuses (e.g. too large)
        msg = exc.args[0].decode(errors="replace") if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        raise EREError(msg, 0) from None
