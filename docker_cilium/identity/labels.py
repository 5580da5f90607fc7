"""Security labels: what an identity is derived from.

As in Cilium a label is ``source:key=value``.  The *source* says where it
came from (``container`` for Docker labels, ``reserved`` for the built-in
identities, ``unspec`` when nobody said).  Two contexts parse a missing
source differently, and mixing them up is a classic policy bug:

* endpoint labels: no source means ``unspec`` (a concrete source);
* selector labels (policy): no source means ``any`` (matches every source).

The identity of a set of labels is keyed by :meth:`Labels.sorted_key`, a
canonical string shared by every node through the kvstore, so it must be
stable across processes and versions and unambiguous: two different label
sets must never produce the same key (else they would share an identity and
thus each other's policy).  Cilium's ``source:key=value;`` format is kept
for readability, with backslash escaping of the delimiters so that values
containing ``;`` or ``=`` cannot forge another label set.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator, Mapping

SOURCE_UNSPEC = "unspec"
SOURCE_ANY = "any"
SOURCE_CONTAINER = "container"
SOURCE_RESERVED = "reserved"

# Characters a source may not contain: they delimit the encodings (':' the
# string form, ';'/'=' the sorted key, '/' the kvstore paths built from it).
_SOURCE_FORBIDDEN = set(":;=/\\")


@dataclass(frozen=True, order=True)
class Label:
    """One ``source:key=value`` label; ``value`` may be empty (``reserved:host``)."""

    source: str
    key: str
    value: str = ""

    def __post_init__(self) -> None:
        if not self.source or _SOURCE_FORBIDDEN & set(self.source):
            raise ValueError(f"invalid label source {self.source!r}")
        if not self.key:
            raise ValueError("label key must not be empty")

    @classmethod
    def parse(cls, s: str, default_source: str = SOURCE_UNSPEC) -> "Label":
        """Parse ``"source:key=value"``, ``"key=value"``, ``"source:key"`` or ``"key"``.

        A ``:`` before the first ``=`` separates the source, so keys like
        ``io.cilium.k8s:foo`` are only expressible with an explicit source.
        """
        s = s.strip()
        head, eq, value = s.partition("=")
        source, colon, key = head.partition(":")
        if not colon:
            source, key = default_source, head
        if not key:
            raise ValueError(f"invalid label {s!r}: empty key")
        return cls(source, key, value if eq else "")

    @classmethod
    def parse_selector(cls, s: str) -> "Label":
        """Parse a label used in a policy selector: no source means ``any``."""
        return cls.parse(s, default_source=SOURCE_ANY)

    def matches(self, other: "Label") -> bool:
        """Does this (selector) label select the endpoint label ``other``?"""
        return (
            self.key == other.key
            and self.value == other.value
            and (self.source == SOURCE_ANY or self.source == other.source)
        )

    def __str__(self) -> str:
        return f"{self.source}:{self.key}={self.value}" if self.value else f"{self.source}:{self.key}"

    def _encoded(self) -> str:
        return f"{self.source}:{_esc(self.key, ';=')}={_esc(self.value, ';')};"


def _esc(s: str, special: str) -> str:
    out = []
    for ch in s:
        if ch == "\\" or ch in special:
            out.append("\\")
        out.append(ch)
    return "".join(out)


class Labels:
    """Immutable, sorted set of :class:`Label`; hashable, usable as a dict key."""

    __slots__ = ("_items", "_hash")

    def __init__(self, labels: Iterable[Label] = ()) -> None:
        items = tuple(sorted(set(labels)))
        for lbl in items:
            if not isinstance(lbl, Label):
                raise TypeError(f"Labels holds Label objects, got {lbl!r}")
        self._items: tuple[Label, ...] = items
        self._hash = hash(items)

    # --------------------------------------------------------- constructors

    @classmethod
    def parse(cls, strings: Iterable[str], default_source: str = SOURCE_UNSPEC) -> "Labels":
        return cls(Label.parse(s, default_source) for s in strings)

    @classmethod
    def parse_selector(cls, strings: Iterable[str]) -> "Labels":
        return cls(Label.parse_selector(s) for s in strings)

    @classmethod
    def from_docker(cls, labels: Mapping[str, str] | None) -> "Labels":
        """Docker container labels -> ``container:key=value`` labels.

        Docker label keys are taken verbatim (no ``source:`` parsing): a
        container must not be able to claim ``reserved:...`` labels.
        """
        return cls(Label(SOURCE_CONTAINER, k, v or "") for k, v in (labels or {}).items())

    @classmethod
    def from_sorted_key(cls, key: str) -> "Labels":
        """Inverse of :meth:`sorted_key` (used to read identities back from the store)."""
        labels: list[Label] = []
        fields: list[str] = []
        cur: list[str] = []
        stage = 0  # 0: source (until ':'), 1: key (until '='), 2: value (until ';')
        i = 0
        while i < len(key):
            ch = key[i]
            if ch == "\\":
                if i + 1 >= len(key):
                    raise ValueError(f"invalid label key {key!r}: dangling escape")
                cur.append(key[i + 1])
                i += 2
                continue
            if stage == 0 and ch == ":" or stage == 1 and ch == "=":
                fields.append("".join(cur))
                cur = []
                stage += 1
            elif stage == 2 and ch == ";":
                fields.append("".join(cur))
                labels.append(Label(*fields))
                fields, cur, stage = [], [], 0
            elif ch == ";":
                raise ValueError(f"invalid label key {key!r}: truncated label")
            else:
                cur.append(ch)
            i += 1
        if cur or fields:
            raise ValueError(f"invalid label key {key!r}: missing final ';'")
        return cls(labels)

    # -------------------------------------------------------------- access

    def sorted_key(self) -> str:
        """Canonical identity key, e.g. ``container:id=app1;container:zone=a;``."""
        return "".join(lbl._encoded() for lbl in self._items)

    def to_strings(self) -> list[str]:
        return [str(lbl) for lbl in self._items]

    def get(self, key: str, source: str | None = None) -> Label | None:
        for lbl in self._items:
            if lbl.key == key and (source is None or lbl.source == source):
                return lbl
        return None

    def matches(self, selector: Iterable[Label]) -> bool:
        """True if every selector label selects some label of this set."""
        return all(any(sel.matches(lbl) for lbl in self._items) for sel in selector)

    def union(self, other: Iterable[Label]) -> "Labels":
        return Labels((*self._items, *other))

    def __iter__(self) -> Iterator[Label]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, item: object) -> bool:
        return item in self._items

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Labels) and self._items == other._items

    def __hash__(self) -> int:
        return self._hash

    def __repr__(self) -> str:
        return f"Labels({self.to_strings()!r})"

    def __str__(self) -> str:
        return ",".join(self.to_strings())


def from_docker(labels: Mapping[str, str] | None) -> Labels:
    """Module-level alias of :meth:`Labels.from_docker`."""
    return Labels.from_docker(labels)
