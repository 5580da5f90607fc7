"""POSIX extended regular expressions (ERE) as RE2 patterns.

Cilium documents the ``method``, ``path`` and ``host`` of an HTTP rule as
POSIX extended regexes. RE2 (the engine that matches them: linear time,
whatever the pattern and the request) and Python's ``re`` read several ERE
constructs differently, so patterns are translated, not passed through:

* bracket expressions: ``]`` first is a literal, ``\\`` inside is a literal,
  ``[:alpha:]``-style classes (ASCII, "C" locale), ``[.c.]`` and ``[=c=]``
  for a single character; everything else Python would give a meaning to
  (``[``, ``&&``, ``--``...) is escaped;
* ``$`` is the end of the string (``\\z``: Python's and RE2's ``$`` also
  match before a final newline), ``.`` matches any character including
  newline (RE2's ``dot_nl``);
* a repeated quantifier (``a*?``, ``a*+``) repeats the quantified atom, as in
  GNU ERE: Python would read a lazy or possessive quantifier;
* ``\\`` before a special or punctuation character is that literal character;
  the GNU/RE2 classes ``\\w \\W \\s \\S \\d \\D`` (ASCII) are accepted because
  Cilium's own validator (Go's RE2) takes them; any other escape is refused.

Refused with a precise message (:class:`EREError`): Python/Perl-only syntax
that ERE does not have, such as ``(?...)`` groups and lookarounds, back
references, ``\\b``; unbalanced parentheses or brackets; a quantifier with
nothing to repeat; bad intervals and ranges. A ``{`` that does not start a
valid interval ``{m}``, ``{m,}``, ``{m,n}`` is a literal (GNU and RE2 agree).
"""

from __future__ import annotations

import re

#: POSIX's RE_DUP_MAX: the largest count of an interval.
DUP_MAX = 255
#: POSIX character classes, ASCII ("C" locale), as Python class contents.
CLASSES = {
    "alpha": "a-zA-Z", "digit": "0-9", "alnum": "a-zA-Z0-9", "upper": "A-Z", "lower": "a-z",
    "space": " \\t\\n\\r\\f\\v", "blank": " \\t", "punct": re.escape("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"),
    "print": " -~", "graph": "!-~", "cntrl": "\\x00-\\x1f\\x7f", "xdigit": "0-9A-Fa-f",
}
ESCAPE_CLASSES = {"w": "[a-zA-Z0-9_]", "W": "[^a-zA-Z0-9_]", "s": "[ \\t\\n\\r\\f\\v]",
                  "S": "[^ \\t\\n\\r\\f\\v]", "d": "[0-9]", "D": "[^0-9]"}
#: the end of the subject (RE2 syntax)
END = r"\z"
_INTERVAL = re.compile(r"\{(\d+)(,(\d*))?\}")


class EREError(ValueError):
    """An invalid (or non-ERE) pattern; ``pos`` is the offending offset."""

    def __init__(self, reason: str, pos: int) -> None:
        self.reason, self.pos = reason, pos
        super().__init__(f"{reason} at position {pos}")


class _Translator:
    def __init__(self, pattern: str) -> None:
        self.p = pattern
        self.i = 0

    def peek(self) -> str:
        return self.p[self.i] if self.i < len(self.p) else ""

    def alternation(self, depth: int) -> str:
        branches = [self.branch(depth)]
        while self.peek() == "|":
            self.i += 1
            branches.append(self.branch(depth))
        return "|".join(branches)

    def branch(self, depth: int) -> str:
        atoms: list[str] = []
        quantified = False
        while self.i < len(self.p):
            c = self.p[self.i]
            if c == "|" or (c == ")" and depth > 0):
                break
            quant = self.quantifier()
            if quant is not None:
                if not atoms or atoms[-1] in ("^", END):
                    raise EREError(f"quantifier {quant!r} has nothing to repeat", self.i - len(quant))
                if quantified:  # a*? is (a*)?, never Python's lazy or possessive a*?
                    atoms[-1] = f"(?:{atoms[-1]})"
                atoms[-1] += quant
                quantified = True
                continue
            atoms.append(self.atom(depth))
            quantified = False
        return "".join(atoms)

    def quantifier(self) -> str | None:
        c = self.peek()
        if c and c in "*+?":
            self.i += 1
            return c
        if c == "{":
            m = _INTERVAL.match(self.p, self.i)
            if m is None:
                return None  # a literal "{"
            lo = int(m.group(1))
            hi = lo if m.group(2) is None else (int(m.group(3)) if m.group(3) else None)
            if lo > DUP_MAX or (hi is not None and hi > DUP_MAX):
                raise EREError(f"interval count above {DUP_MAX}", self.i)
            if hi is not None and hi < lo:
                raise EREError(f"invalid interval {m.group(0)}: {hi} < {lo}", self.i)
            self.i = m.end()
            return m.group(0)
        return None

    def atom(self, depth: int) -> str:
        start = self.i
        c = self.p[self.i]
        self.i += 1
        if c == "(":
            if self.peek() == "?":
                raise EREError("(?...) groups (lookarounds, flags, non-capturing) are not POSIX ERE", start)
            inner = self.alternation(depth + 1)
            if self.peek() != ")":
                raise EREError("unmatched (", start)
            self.i += 1
            return f"(?:{inner})"
        if c == ")":
            raise EREError("unmatched )", start)
        if c == ".":
            return "."
        if c == "^":
            return "^"
        if c == "$":
            return END
        if c == "[":
            return self.bracket(start)
        if c == "\\":
            return self.escape(start)
        return re.escape(c)

    def escape(self, start: int) -> str:
        if self.i >= len(self.p):
            raise EREError("trailing backslash", start)
        c = self.p[self.i]
        self.i += 1
        if c in ESCAPE_CLASSES:
            return ESCAPE_CLASSES[c]
        if c.isascii() and not c.isalnum() and c.isprintable():
            return re.escape(c)
        if c.isdigit():
            raise EREError(f"back reference \\{c} is not POSIX ERE", start)
        raise EREError(f"unsupported escape \\{c}", start)

    def bracket(self, start: int) -> str:
        negate = self.peek() == "^"
        if negate:
            self.i += 1
        items: list[str] = []
        first = True
        while True:
            if self.i >= len(self.p):
                raise EREError("unmatched [", start)
            c = self.p[self.i]
            if c == "]" and not first:
                self.i += 1
                break
            first = False
            if self.p.startswith("[:", self.i):
                items.append(self.bracket_special())
                continue
            lo = self.bracket_char()
            if self.peek() == "-" and self.p[self.i + 1:self.i + 2] not in ("]", ""):
                self.i += 1
                if self.p.startswith("[:", self.i):
                    raise EREError("a range cannot end with a character class", self.i)
                pos = self.i
                hi = self.bracket_char()
                if ord(hi) < ord(lo):
                    raise EREError(f"invalid range {lo}-{hi}", pos)
                items.append(f"{re.escape(lo)}-{re.escape(hi)}")
            else:
                items.append(re.escape(lo))
        return "[" + ("^" if negate else "") + "".join(items) + "]"

    def bracket_char(self) -> str:
        """One character of a bracket expression: itself (a backslash is a
        literal here), or the single character of ``[.c.]`` / ``[=c=]``."""
        if self.p[self.i:self.i + 2] in ("[.", "[="):
            name = self.bracket_special()
            return name
        c = self.p[self.i]
        self.i += 1
        return c

    def bracket_special(self) -> str:
        """``[:class:]`` -> the class as Python class contents; ``[.c.]`` and
        ``[=c=]`` (single characters only) -> c."""
        kind = self.p[self.i + 1]
        end = self.p.find(kind + "]", self.i + 2)
        if end < 0:
            raise EREError(f"unterminated [{kind}", self.i)
        name = self.p[self.i + 2:end]
        pos = self.i
        self.i = end + 2
        if kind == ":":
            if name not in CLASSES:
                raise EREError(f"unknown character class [:{name}:]", pos)
            return CLASSES[name]
        if len(name) != 1:
            raise EREError(f"unsupported collating element [{kind}{name}{kind}]", pos)
        return name


def translate(pattern: str) -> str:
    """The RE2 pattern equivalent to the ERE ``pattern`` (for ``fullmatch``,
    with ``dot_nl``)."""
    t = _Translator(pattern)
    out = t.alternation(0)
    if t.i != len(pattern):
        raise EREError("unmatched )", t.i)
    return out
