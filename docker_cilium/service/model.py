"""A service as the API and the store hold it, in Cilium's ``ServiceSpec`` shape.

``{"id": N, "frontend-address": {"ip", "port", "protocol"},
"backend-addresses": [{"ip", "port", "weight"}], "flags": {...}}``: one
frontend (VIP, port, TCP or UDP) and its backends, all of the frontend's
address family and protocol. Parsing is strict and names the offending field,
so a bad request is a precise 400 and never reaches the maps.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from docker_cilium.datapath.maps.lbmap import PROTOCOLS, L4Addr
from docker_cilium.errors import BadRequest

#: Service IDs are the datapath's reverse-NAT index (a __u16); 0 means none.
MAX_SERVICE_ID = 0xFFFF
#: Backends of one service (slots in cilium_lb{4,6}_services_v2).
MAX_BACKENDS = 1024
SPEC_FIELDS = {"id", "frontend-address", "backend-addresses", "flags"}
FRONTEND_FIELDS = {"ip", "port", "protocol", "scope"}
BACKEND_FIELDS = {"ip", "port", "weight", "protocol", "state", "preferred", "nodeName"}


@dataclass(frozen=True)
class Service:
    id: int
    frontend: L4Addr
    backends: tuple[L4Addr, ...]

    # -- API model ------------------------------------------------------------------------
    def spec(self) -> dict[str, Any]:
        """Cilium's ServiceSpec."""
        return {"id": self.id,
                "frontend-address": {"ip": self.frontend.ip, "port": self.frontend.port,
                                     "protocol": self.frontend.protocol, "scope": "external"},
                "backend-addresses": [{"ip": b.ip, "port": b.port, "weight": 1, "state": "active"}
                                      for b in self.backends],
                "flags": {"type": "ClusterIP"}}

    def model(self) -> dict[str, Any]:
        """Cilium's Service: the spec and what the datapath realized (the same here:
        a service is answered only once its maps are written)."""
        return {"spec": self.spec(), "status": {"realized": self.spec()}}


def parse_id(raw: Any, where: str = "id", *, allocate: bool = False) -> int:
    """A service ID from a path segment or a JSON number: 1..65535 (``allocate``: 0 too,
    Cilium's "no ID given", for which the agent allocates one)."""
    low = 0 if allocate else 1
    if isinstance(raw, str):
        if not (raw.isascii() and raw.isdigit()) or len(raw) > 5:
            raise BadRequest(f"invalid service {where} {raw[:80]!r}: expected a number ({low}-{MAX_SERVICE_ID})")
        raw = int(raw)
    if isinstance(raw, bool) or not isinstance(raw, int) or not low <= raw <= MAX_SERVICE_ID:
        raise BadRequest(f"invalid service {where} {raw!r}: expected a number ({low}-{MAX_SERVICE_ID})")
    return raw


def _object(raw: Any, where: str, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise BadRequest(f"{where}: expected an object, got {type(raw).__name__}")
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise BadRequest(f"{where}: unknown field {unknown[0][:80]!r} (allowed: {', '.join(sorted(allowed))})")
    return raw


def _ip(raw: Any, where: str) -> str:
    if not isinstance(raw, str):
        raise BadRequest(f"{where}.ip: expected an IPv4 or IPv6 address, got {type(raw).__name__}")
    try:
        ip = ipaddress.ip_address(raw)
    except ValueError:
        raise BadRequest(f"{where}.ip: {raw[:80]!r} is not an IPv4 or IPv6 address") from None
    if ip.is_unspecified or ip.is_multicast or ip.is_loopback or (ip.version == 6 and ip.is_link_local):
        raise BadRequest(f"{where}.ip: {ip} cannot be a service address (unspecified, loopback, "
                         "multicast or IPv6 link-local)")
    return str(ip)


def _port(raw: Any, where: str) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int) or not 1 <= raw <= 65535:
        raise BadRequest(f"{where}.port: expected a port number (1-65535), got {raw!r}")
    return raw


def parse_protocol(raw: Any, where: str = "protocol") -> str:
    """TCP or UDP (any case); ANY and others are not balanced here."""
    if not isinstance(raw, str) or raw.upper() not in PROTOCOLS:
        raise BadRequest(f"{where}: expected TCP or UDP, got {raw!r}")
    return raw.upper()


def parse_spec(body: Any, path_id: int) -> Service:
    """Cilium's ServiceSpec as PUT to /v1/service/{id}: ``id`` (if given) must be the path's
    (``path_id`` 0: the agent allocates one)."""
    spec = _object(body, "service", SPEC_FIELDS)
    if "id" in spec and parse_id(spec["id"], allocate=True) != path_id:
        raise BadRequest(f"id {spec['id']} in the body differs from {path_id} in the path")
    if "frontend-address" not in spec:
        raise BadRequest("frontend-address is required")
    fe_raw = _object(spec["frontend-address"], "frontend-address", FRONTEND_FIELDS)
    fe_ip = _ip(fe_raw.get("ip"), "frontend-address")
    fe = L4Addr(fe_ip, _port(fe_raw.get("port"), "frontend-address"),
                parse_protocol(fe_raw.get("protocol", "TCP"), "frontend-address.protocol"))
    family = ipaddress.ip_address(fe_ip).version
    raw_backends = spec.get("backend-addresses", [])
    if not isinstance(raw_backends, list):
        raise BadRequest(f"backend-addresses: expected an array, got {type(raw_backends).__name__}")
    if len(raw_backends) > MAX_BACKENDS:
        raise BadRequest(f"backend-addresses: {len(raw_backends)} backends, at most {MAX_BACKENDS}")
    backends: list[L4Addr] = []
    for i, raw in enumerate(raw_backends):
        where = f"backend-addresses[{i}]"
        b = _object(raw, where, BACKEND_FIELDS)
        ip = _ip(b.get("ip"), where)
        if ipaddress.ip_address(ip).version != family:
            raise BadRequest(f"{where}.ip: {ip} is not IPv{family} like the frontend {fe_ip}")
        weight = b.get("weight", 1)
        if weight != 1 or isinstance(weight, bool):
            raise BadRequest(f"{where}.weight: only weight 1 is supported (backends are chosen uniformly), "
                             f"got {weight!r}")
        if "protocol" in b and parse_protocol(b["protocol"], f"{where}.protocol") != fe.protocol:
            raise BadRequest(f"{where}.protocol: {b['protocol']} differs from the frontend's {fe.protocol}")
        addr = L4Addr(ip, _port(b.get("port"), where), fe.protocol)
        if addr in backends:
            raise BadRequest(f"{where}: {format_addr(addr)} is listed twice")
        backends.append(addr)
    return Service(path_id, fe, tuple(backends))


def format_addr(a: L4Addr) -> str:
    """``IP:PORT``, IPv6 in brackets (Cilium's L3n4Addr string without the protocol)."""
    host = f"[{a.ip}]" if ":" in a.ip else a.ip
    return f"{host}:{a.port}"


def parse_addr(text: str, where: str) -> tuple[str, int]:
    """``IP:PORT`` / ``[IPv6]:PORT`` as the CLI takes it -> (ip, port); ValueError names ``where``."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host:
        raise ValueError(f"{where}: {text!r} is not IP:PORT ([IPv6]:PORT)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"{where}: {text!r}: write an IPv6 address in brackets, [IP]:PORT")
    if not port.isascii() or not port.isdigit():
        raise ValueError(f"{where}: {text!r}: port {port!r} is not a number")
    return host, int(port)
