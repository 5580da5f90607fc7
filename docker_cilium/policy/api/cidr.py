"""CIDR peers: ``fromCIDR``/``toCIDR`` strings and ``fromCIDRSet``/``toCIDRSet``
``{"cidr": ..., "except": [...]}`` rules.

CIDR peers are matched through *CIDR identities* (see ``policy.resolve``): the
prefix P of a CIDR identity is described by the labels ``cidr:Q`` for every
prefix Q containing P (down to ``/0``) plus ``reserved:world``. A rule
"C except E1..En" is turned into the list of prefixes covering C minus the
excepts (:meth:`CIDRRule.allowed_prefixes`), and selects the identities that
carry ``cidr:S`` for one of those prefixes.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass, field
from typing import Any, Iterable

from docker_cilium.identity.reserved import WORLD_LABEL

from ._util import check_fields, expect_object, expect_string, field_path, get_list, index_path
from .errors import PolicyValidationError

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

CIDR_SOURCE = "cidr"


_OCTET = r"(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_V4_PREFIX = re.compile(rf"{_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}/(3[0-2]|[12]?\d)\Z")


def v4_prefix(text: str) -> tuple[int, int] | None:
    """(address as an int, prefix length) of ``a.b.c.d/n`` written plainly
    (no leading zeros, no spaces), read without ``ipaddress``'s general
    parser; None for anything else (IPv6, masks, bare addresses...), which
    that parser then reads, or refuses."""
    m = _V4_PREFIX.match(text)
    if m is None:
        return None
    a, b, c, d, plen = m.groups()
    return (int(a) << 24) | (int(b) << 16) | (int(c) << 8) | int(d), int(plen)


def parse_network(text: str) -> Network:
    """Parse ``10.0.0.0/8`` (host bits are masked, as Go's ParseCIDR does) or a
    bare address (``1.2.3.4`` -> ``/32``, ``f00d::1`` -> ``/128``)."""
    v4 = v4_prefix(text)
    if v4 is not None:  # the common case, a quarter of the cost (100,000 CIDR rules)
        return ipaddress.IPv4Network(v4, strict=False)
    return ipaddress.ip_network(text.strip(), strict=False)


@dataclass(frozen=True)
class CIDR:
    """One prefix as the user wrote it; ``network`` is the parsed, masked form."""

    text: str
    network: Network = field(compare=False, repr=False)

    @classmethod
    def from_json(cls, data: Any, path: str) -> "CIDR":
        text = expect_string(data, path, "CIDR")
        try:
            net = parse_network(text)
        except ValueError:
            raise PolicyValidationError(path, f"invalid CIDR {json.dumps(text)}") from None
        return cls(text, net)

    def to_json(self) -> str:
        return self.text

    def __str__(self) -> str:
        return str(self.network)


def subtract(net: Network, excepts: Iterable[Network]) -> list[Network]:
    """``net`` minus the ``excepts`` as a minimal sorted list of prefixes.

    Address-range subtraction (``ipaddress.address_exclude``); excepts of the
    other address family, or outside ``net``, change nothing.
    """
    result = [net]
    for exc in excepts:
        nxt: list[Network] = []
        for n in result:
            if n.version != exc.version or not n.overlaps(exc):
                nxt.append(n)
            elif n.subnet_of(exc):  # type: ignore[arg-type]
                continue
            else:  # exc is strictly inside n
                nxt.extend(n.address_exclude(exc))  # type: ignore[arg-type]
        result = nxt
    return sorted(result, key=lambda n: (n.version, n.network_address, n.prefixlen))


@dataclass(frozen=True)
class CIDRRule:
    """``{"cidr": C, "except": [E...]}``; every except must lie inside C."""

    cidr: CIDR
    except_: tuple[CIDR, ...] = ()

    def allowed_prefixes(self) -> list[Network]:
        return subtract(self.cidr.network, (e.network for e in self.except_))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"cidr": self.cidr.to_json()}
        if self.except_:
            out["except"] = [e.to_json() for e in self.except_]
        return out

    @classmethod
    def from_json(cls, data: Any, path: str) -> "CIDRRule":
        data = expect_object(data, path, "a CIDR rule")
        check_fields(data, path, ("cidr", "except"))
        if "cidr" not in data:
            raise PolicyValidationError(path, "cidr is required")
        cidr = CIDR.from_json(data["cidr"], field_path(path, "cidr"))
        exc_path = field_path(path, "except")
        excepts = []
        for i, raw in enumerate(get_list(data, "except", path)):
            p = index_path(exc_path, i)
            exc = CIDR.from_json(raw, p)
            if exc.network.version != cidr.network.version or not exc.network.subnet_of(cidr.network):  # type: ignore[arg-type]
                raise PolicyValidationError(p, f"except {exc} is not inside cidr {cidr}")
            excepts.append(exc)
        return cls(cidr, tuple(excepts))


def supernets(prefix: "str | Network") -> list[Network]:
    """P and every prefix that contains it, from P itself down to /0."""
    net = parse_network(prefix) if isinstance(prefix, str) else prefix
    return [net.supernet(new_prefix=plen) for plen in range(net.prefixlen, -1, -1)]


def cidr_label(net: "str | Network") -> str:
    """``cidr:10.0.0.0/8`` (IPv6 keeps its colons: ``cidr:f00d::/64``)."""
    n = parse_network(net) if isinstance(net, str) else net
    return f"{CIDR_SOURCE}:{n}"


def cidr_identity_labels(prefix: "str | Network") -> frozenset[str]:
    """Labels of the local CIDR identity for ``prefix``: ``cidr:Q`` for every Q
    containing the prefix, plus ``reserved:world`` (CIDR peers are outside the
    cluster, so ``fromEntities: [world]`` covers them too)."""
    return frozenset([cidr_label(q) for q in supernets(prefix)] + [WORLD_LABEL])
