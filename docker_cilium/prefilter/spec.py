"""Cilium's ``PrefilterSpec`` (``{revision, deny[]}``) and its validation.

A CIDR is read as Go's ``net.ParseCIDR`` reads it (Cilium's parser): an
address and a prefix length are both required, host bits are cleared
(``10.1.2.3/8`` is ``10.0.0.0/8``). Every problem is a ``BadRequest`` that
names the offending entry, before anything is changed.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from typing import Any

from docker_cilium.errors import BadRequest

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Most CIDRs one request may carry (the tries hold CIDR_MAP_SIZE per family).
MAX_SPEC_CIDRS = 65536


def parse_cidr(text: Any, where: str = "deny") -> Network:
    """``"192.0.2.0/24"`` -> the network; precise 400 otherwise."""
    if not isinstance(text, str):
        raise BadRequest(f"{where}: a CIDR must be a string, got {json.dumps(text)[:80]}")
    addr, slash, plen = text.strip().partition("/")
    if not slash:
        raise BadRequest(f"{where}: invalid CIDR {text[:80]!r}: no prefix length (e.g. 192.0.2.0/24, 2001:db8::/32)")
    if not (plen.isascii() and plen.isdigit()) or len(plen) > 3:
        raise BadRequest(f"{where}: invalid CIDR {text[:80]!r}: prefix length must be a number")
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        raise BadRequest(f"{where}: invalid CIDR {text[:80]!r}: {addr[:60]!r} is not an IPv4 or IPv6 address") from None
    if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id is not None:
        raise BadRequest(f"{where}: invalid CIDR {text[:80]!r}: a zone index (%...) has no place in a prefix")
    if int(plen) > ip.max_prefixlen:
        raise BadRequest(f"{where}: invalid CIDR {text[:80]!r}: prefix length {int(plen)} is above "
                         f"{ip.max_prefixlen} for IPv{ip.version}")
    return ipaddress.ip_network(f"{ip}/{int(plen)}", strict=False)


def sort_key(net: Network) -> tuple[int, int, int]:
    """IPv4 first, then by address and prefix length."""
    return net.version, int(net.network_address), net.prefixlen


@dataclass(frozen=True)
class PrefilterSpec:
    """A request's ``{revision, deny}``: revision 0 means "whatever is current"."""

    revision: int
    deny: tuple[Network, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"revision": self.revision, "deny": [str(n) for n in self.deny]}


def parse_spec(body: Any) -> PrefilterSpec:
    """A PATCH/DELETE body -> PrefilterSpec (at least one CIDR, no duplicates kept)."""
    if not isinstance(body, dict):
        raise BadRequest(f"request body must be a JSON object {{revision, deny}}, got {type(body).__name__}")
    unknown = sorted(set(body) - {"revision", "deny"})
    if unknown:
        raise BadRequest(f"unknown field {unknown[0][:80]!r} (allowed: deny, revision)")
    revision = body.get("revision", 0)
    if revision is None:
        revision = 0
    if isinstance(revision, bool) or not isinstance(revision, int) or revision < 0:
        raise BadRequest(f"revision must be a non-negative integer, got {json.dumps(revision)[:80]}")
    deny = body.get("deny")
    if not isinstance(deny, list):
        raise BadRequest(f"deny must be a JSON array of CIDR strings, got {json.dumps(deny)[:80]}")
    if not deny:
        raise BadRequest("deny is empty: give at least one CIDR")
    if len(deny) > MAX_SPEC_CIDRS:
        raise BadRequest(f"deny has {len(deny)} CIDRs, more than one request may carry ({MAX_SPEC_CIDRS})")
    nets = [parse_cidr(c, f"deny[{i}]") for i, c in enumerate(deny)]
    return PrefilterSpec(revision, tuple(dict.fromkeys(nets)))
