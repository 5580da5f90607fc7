"""Decoding JSON that comes from outside the agent, within bounds.

Both sockets (dockerd's plugin calls, the REST API) and policy documents go
through ``loads`` (or ``iter_array``, element by element, for large policies). Python's decoder accepts more than JSON and recurses once
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
from typing import Any, Iterator

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


class NotAnArray(JSONError):
    """:func:`iter_array` was given a document that is no array; ``value`` is it, decoded."""

    def __init__(self, value: Any) -> None:
        super().__init__(f"expected a JSON array, got {type(value).__name__}")
        self.value = value


def _text(data: bytes | bytearray | str) -> tuple[bytes, str]:
    """``data`` as UTF-8 bytes and as text; JSONError if it is not valid UTF-8
    (a str with a lone surrogate included: it could not be written back)."""
    if isinstance(data, str):
        try:
            return data.encode("utf-8"), data
        except UnicodeEncodeError as exc:
            raise JSONError(f"not valid UTF-8: {exc}") from None
    raw = bytes(data)
    try:
        return raw, raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise JSONError(f"not valid UTF-8: {exc}") from None


def _decode(text: str) -> Any:
    try:
        return json.loads(text, parse_constant=_constant, parse_float=_finite)
    except (JSONError, json.JSONDecodeError):
        raise
    except RecursionError:  # only if the stack was already deep: check_depth bounds it
        raise JSONError(f"JSON nested deeper than {MAX_DEPTH} levels") from None
    except ValueError:  # int() refuses the literal
        raise JSONError(f"an integer has more than {sys.get_int_max_str_digits()} digits") from None


def _check_surrogates(raw: bytes, value: Any) -> None:
    """A \\u escape of half a surrogate pair decodes to a str that cannot be
    written back as UTF-8: refused."""
    if _SURROGATE_ESCAPE.search(raw):
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise JSONError("a \\u escape is half of a UTF-16 surrogate pair") from None


def loads(data: bytes | bytearray | str) -> Any:
    """Decode one JSON document; JSONError (or json.JSONDecodeError, whose
    ``lineno``/``colno`` say where) if it is not one the agent takes."""
    raw, text = _text(data)
    check_depth(raw)
    value = _decode(text)
    _check_surrogates(raw, value)
    return value


_WS = " \t\n\r"


def _skip_ws(text: str, i: int) -> int:
    while i < len(text) and text[i] in _WS:
        i += 1
    return i


def iter_array(data: bytes | bytearray | str) -> Iterator[Any]:
    """The elements of a JSON array, decoded one at a time with :func:`loads`'
    bounds, so a caller can interleave a multi-megabyte document with other
    work. NotAnArray if the document is valid JSON but no array."""
    raw, text = _text(data)
    i = _skip_ws(text, 0)
    if text[i:i + 1] != "[" or _SURROGATE_ESCAPE.search(raw):
        value = loads(raw)  # whole-document checks (rare: no array, or surrogate escapes)
        if not isinstance(value, list):
            raise NotAnArray(value)
        yield from value
        return
    check_depth(raw)
    dec = json.JSONDecoder(parse_constant=_constant, parse_float=_finite)
    try:
        i = _skip_ws(text, i + 1)
        if text[i:i + 1] == "]":
            i += 1
        else:
            while True:
                item, i = dec.raw_decode(text, i)
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
    except (JSONError, json.JSONDecodeError):
        raise
    except ValueError:  # int() refuses the literal
        raise JSONError(f"an integer has more than {sys.get_int_max_str_digits()} digits") from None
