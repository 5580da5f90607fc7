"""Cilium's endpoint references, checked before any endpoint is looked at.

``cilium endpoint get`` and ``/v1/endpoint/{id}`` take ``N`` (the same as
``cilium-local:N``), ``container-id:ID``, ``container-name:NAME`` or
``docker-endpoint:ID``. An endpoint ID is Cilium's uint16 in ASCII decimal,
as Go's ``strconv.ParseUint(s, 10, 16)`` reads it: ``str.isdigit`` alone
would let ``'²'`` (which ``int()`` refuses) or ``'٣'`` (which ``int()``
reads as 3) through.
"""

from __future__ import annotations

from dataclasses import dataclass

from docker_cilium.endpoint.model import Endpoint
from docker_cilium.errors import BadRequest

CILIUM_LOCAL = "cilium-local"
PREFIXES = (CILIUM_LOCAL, "container-id", "container-name", "docker-endpoint")
MAX_ENDPOINT_ID = 0xFFFF


def parse_endpoint_id(text: str) -> int | None:
    """``text`` as an endpoint ID, or None if it is not one."""
    if not (text.isascii() and text.isdigit()) or len(text.lstrip("0")) > 5:
        return None
    number = int(text)
    return number if number <= MAX_ENDPOINT_ID else None


@dataclass(frozen=True)
class Reference:
    """A well-formed endpoint reference: ``kind`` is one of ``PREFIXES``."""

    kind: str
    value: str
    id: int | None = None  # for cilium-local

    def matches(self, ep: Endpoint) -> bool:
        if self.kind == CILIUM_LOCAL:
            return ep.id == self.id
        if self.kind == "container-id":
            return ep.container_id.startswith(self.value)
        if self.kind == "container-name":
            return ep.container_name.lstrip("/") == self.value.lstrip("/")
        return ep.docker_endpoint_id.startswith(self.value)


def parse_reference(ref: str) -> Reference:
    """``ref`` checked; BadRequest names what is wrong with a malformed one.

    Whether the endpoint exists is the caller's question (a 404).
    """
    kind, _, value = ref.partition(":") if ":" in ref else (CILIUM_LOCAL, "", ref)
    if kind not in PREFIXES:
        raise BadRequest(f"invalid endpoint reference {_cut(ref)!r}: unknown prefix {_cut(kind)!r} "
                         f"(expected one of {', '.join(PREFIXES)})")
    if kind != CILIUM_LOCAL:
        if not value:
            raise BadRequest(f"invalid endpoint reference {_cut(ref)!r}: nothing after {kind + ':'!r}")
        return Reference(kind, value)
    number = parse_endpoint_id(value)
    if number is None:
        raise BadRequest(f"invalid endpoint ID {_cut(ref)!r}: expected a number in 0-{MAX_ENDPOINT_ID} "
                         f"or a prefixed reference ({', '.join(p + ':' for p in PREFIXES[1:])}...)")
    return Reference(kind, value, number)


def _cut(text: str) -> str:
    return text if len(text) <= 80 else f"{text[:80]}..."
