"""Decoding JSON that comes from outside the agent, within bounds.

Both sockets (dockerd's plugin calls, the REST API) and policy documents go
through ``loads``. Python's decoder accepts more than JSON and recurses once
per nesting level, so left alone a body of 200,000 ``[`` ends in a
RecursionError (a 500), ``Infinity`` or ``1e400`` arrive as a float that
``int()`` cannot take, and a lone ``\\ud800`` escape yields a string that
cannot be written back as UTF-8. Here every one of those is a ``JSONError``
(a 400) naming what is wrong; what passes is RFC 8259 JSON, UTF-8, at most
``MAX_DEPTH`` levels deep. Duplicate keys keep the last value, as Go's
``encoding/json`` (dockerd, Cilium's API) does.

The depth bound is checked on the raw bytes before decoding, in C-speed byte
operations: every bracket pair with nothing inside is removed, pass after
pass, so the passes bound how deep the pairs nest, and each unmatched
opening bracket left adds one. Brackets inside strings may make that bound
too high, so only when it exceeds ``MAX_DEPTH`` is the depth counted exactly,
with the strings taken out.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import sys
from typing import Any

from docker_cilium.errors import BadRequest

# Cilium's deepest policy rule (toPorts -> rules -> http -> headerMatches ->
# secret) is about a dozen levels; nothing the agent accepts comes near this.
MAX_DEPTH = 64
# Passes of the quick bound: real documents are done in about ten; past this
# the exact count is cheaper than a pass per level of a hostile body.
_PASSES = 16

_PAIRS = bytes.maketrans(b"[{]}", b"(())")
_NOT_BRACKET = bytes(c for c in range(256) if c not in b"[]{}")
_STEP = tuple(1 if c in b"[{" else -1 if c in b"]}" else 0 for c in range(256))
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


class JSONError(BadRequest):
    """The text is outside what the agent decodes (400); says which bound."""


def nesting_depth(raw: bytes) -> int:
    """How deeply ``raw`` nests arrays and objects (brackets in strings ignored)."""
    brackets = _STRING.sub(b"", raw).translate(None, _NOT_BRACKET)
    return max(itertools.accumulate(map(_STEP.__getitem__, brackets)), default=0)


def check_depth(raw: bytes, limit: int = MAX_DEPTH) -> None:
    """Raise JSONError when ``raw`` nests deeper than ``limit``."""
    pairs = raw.translate(_PAIRS, _NOT_BRACKET)
    passes = 0
    while b"()" in pairs and passes < _PASSES:
        pairs = pairs.replace(b"()", b"")
        passes += 1
    # Matched pairs nest at most ``passes`` deep unless some are left; an
    # unmatched '[' or '{' (a truncated or hostile body) encloses all after it.
    bound = limit + 1 if b"()" in pairs else passes + pairs.count(b"(")
    if bound > limit and nesting_depth(raw) > limit:
        raise JSONError(f"JSON nested deeper than {limit} levels")


def _constant(name: str) -> Any:
    raise JSONError(f"{name} is not valid JSON (numbers must be finite)")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise JSONError(f"number {text} is out of range")
    return value


def decoder() -> json.JSONDecoder:
    """A decoder with :func:`loads`' number rules, for callers that decode a
    document piece by piece (``raw_decode``) after :func:`check_depth` and
    :func:`has_surrogate_escape` passed on the whole of it."""
    return json.JSONDecoder(parse_constant=_constant, parse_float=_finite)


def has_surrogate_escape(raw: bytes) -> bool:
    """Whether ``raw`` has a \\u escape of a UTF-16 surrogate (then use :func:`loads`)."""
    return _SURROGATE_ESCAPE.search(raw) is not None


def loads(data: bytes | bytearray | str) -> Any:
    """Decode one JSON document; JSONError (or json.JSONDecodeError, whose
    ``lineno``/``colno`` say where) if it is not one the agent takes."""
    if isinstance(data, str):
        raw = data.encode("utf-8", "surrogatepass")
        text = data
    else:
        raw = bytes(data)
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise JSONError(f"not valid UTF-8: {exc}") from None
    check_depth(raw)
    try:
        value = json.loads(text, parse_constant=_constant, parse_float=_finite)
    except (JSONError, json.JSONDecodeError):
        raise
    except RecursionError:  # only if the stack was already deep: check_depth bounds it
        raise JSONError(f"JSON nested deeper than {MAX_DEPTH} levels") from None
    except ValueError:  # int() refuses the literal
        raise JSONError(f"an integer has more than {sys.get_int_max_str_digits()} digits") from None
    if _SURROGATE_ESCAPE.search(raw):
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise JSONError("a \\u escape is half of a UTF-16 surrogate pair") from None
    return value
