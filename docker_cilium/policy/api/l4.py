"""Layer 4 rules: ``toPorts: [{"ports": [{"port": "80", "protocol": "TCP"}]}]``.

Ports are strings in Cilium's JSON (``"80"``), 1-65535; 0 is rejected because
in the datapath port 0 means "any port" and a user writing ``"0"`` almost
certainly did not mean "all ports". The protocol is TCP, UDP or ANY
(case-insensitive, empty = ANY); ANY later expands to a TCP and a UDP entry.

L7 rules: ``rules.http`` (:mod:`.l7`) is accepted on TCP ports only (as in
Cilium, whose proxy is TCP: a UDP or ANY port with HTTP rules is an error);
the connections it allows go through the L7 proxy. ``rules.kafka``,
``rules.dns`` and generic L7 rules are refused: accepting them without a
parser would silently widen the policy to "all of port N".
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from docker_cilium import u8proto

from ._util import FlatMemo, check_fields, expect_object, field_path, get_list, index_path, json_type
from .errors import PolicyValidationError
from .l7 import PortRuleHTTP

MAX_PORTS = 40
MAX_HTTP_RULES = 256
PROTOCOLS = ("TCP", "UDP", "ANY")
PROTO_NUMBERS = {"TCP": u8proto.TCP, "UDP": u8proto.UDP}  # what toPorts may name

_PORTS = FlatMemo()

L7_UNSUPPORTED = {
    "kafka": "L7 Kafka rules are not supported by docker-cilium",
    "dns": "L7 DNS rules are not supported by docker-cilium",
    "l7proto": "generic L7 rules are not supported by docker-cilium",
    "l7": "generic L7 rules are not supported by docker-cilium",
}


@dataclass(frozen=True)
class PortProtocol:
    """One port/protocol pair; ``protocol`` is normalised to upper case."""

    port: str
    protocol: str = "ANY"

    @property
    def port_number(self) -> int:
        return int(self.port)

    def proto_numbers(self) -> tuple[int, ...]:
        """IP protocol numbers this entry covers (ANY -> TCP and UDP)."""
        if self.protocol == "ANY":
            return (u8proto.TCP, u8proto.UDP)
        return (PROTO_NUMBERS[self.protocol],)

    def to_dict(self) -> dict[str, Any]:
        return {"port": self.port, "protocol": self.protocol}

    def __str__(self) -> str:
        return f"{self.port}/{self.protocol}"

    @classmethod
    def from_json(cls, data: Any, path: str) -> "PortProtocol":
        return _PORTS.parsed(_PORTS.key(data), lambda: cls._parse(data, path))

    @classmethod
    def _parse(cls, data: Any, path: str) -> "PortProtocol":
        data = expect_object(data, path, "a port")
        check_fields(data, path, ("port", "protocol"), {"endPort": "port ranges (endPort) are not supported by docker-cilium"})
        port_path = field_path(path, "port")
        if "port" not in data:
            raise PolicyValidationError(path, "port is required")
        port = data["port"]
        if not isinstance(port, str):
            raise PolicyValidationError(port_path, f'port must be a string like "80", got {json_type(port)}')
        if not port.isascii() or not port.isdigit():
            raise PolicyValidationError(port_path, f"port {json.dumps(port)} is not a number")
        if not 1 <= int(port) <= 65535:
            raise PolicyValidationError(port_path, f"port {int(port)} is out of range 1-65535")
        proto = data.get("protocol")
        if proto is None:
            proto = ""
        if not isinstance(proto, str) or proto.upper() not in PROTOCOLS + ("",):
            raise PolicyValidationError(
                field_path(path, "protocol"), f"invalid protocol {json.dumps(proto)}, must be TCP, UDP or ANY"
            )
        return cls(str(int(port)), proto.upper() or "ANY")


@dataclass(frozen=True)
class PortRule:
    """A ``toPorts`` element: the ports (OR) at which a peer is allowed.
    ``rules``: None = every connection; else only these HTTP requests (an
    empty ``http`` list is None, as Cilium's ``L7Rules.IsEmpty``)."""

    ports: tuple[PortProtocol, ...]
    rules: tuple[PortRuleHTTP, ...] | None = None

    def l4_pairs(self) -> frozenset[tuple[int, int]]:
        """(port, ip protocol) pairs, with ANY expanded."""
        return frozenset((p.port_number, n) for p in self.ports for n in p.proto_numbers())

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"ports": [p.to_dict() for p in self.ports]}
        if self.rules is not None:
            out["rules"] = {"http": [r.to_dict() for r in self.rules]}
        return out

    @classmethod
    def from_json(cls, data: Any, path: str) -> "PortRule":
        data = expect_object(data, path, "a port rule")
        check_fields(data, path, ("ports", "rules"))
        http = _http_rules(data.get("rules"), field_path(path, "rules"))
        raw = get_list(data, "ports", path)
        ports_path = field_path(path, "ports")
        if not raw:
            raise PolicyValidationError(ports_path, "at least one port is required")
        if len(raw) > MAX_PORTS:
            raise PolicyValidationError(
                ports_path, f"too many ports ({len(raw)}), at most {MAX_PORTS} are allowed per rule"
            )
        ports = tuple(PortProtocol.from_json(p, index_path(ports_path, i)) for i, p in enumerate(raw))
        if http is not None:
            for i, p in enumerate(ports):
                if p.protocol != "TCP":
                    raise PolicyValidationError(
                        field_path(index_path(ports_path, i), "protocol"),
                        f'L7 rules can only apply to TCP (not {p.protocol}): set "protocol": "TCP"')
        return cls(ports, http)


def _http_rules(rules: Any, path: str) -> tuple[PortRuleHTTP, ...] | None:
    """``rules`` of a toPorts element: its HTTP rules, None when it has none."""
    if rules is None:
        return None
    rules = expect_object(rules, path, "rules")
    check_fields(rules, path, ("http",), L7_UNSUPPORTED)
    http_path = field_path(path, "http")
    raw = get_list(rules, "http", path)
    if len(raw) > MAX_HTTP_RULES:
        raise PolicyValidationError(http_path, f"too many HTTP rules ({len(raw)}), at most {MAX_HTTP_RULES}")
    http = tuple(PortRuleHTTP.from_json(r, index_path(http_path, i)) for i, r in enumerate(raw))
    return http or None
