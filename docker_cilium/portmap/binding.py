"""Published ports: what dockerd asks for and what the agent maps.

dockerd sends ``docker run -p`` / ``-P`` in ProgramExternalConnectivity's
options as libnetwork's ``types.PortBinding`` list (``com.docker.network.portmap``:
``Proto`` 6/17/132, ``Port``, ``HostIP``, ``HostPort``, ``HostPortEnd``) beside
the exposed ports. A binding with HostPort 0 (``-P``, ``-p 80``) asks for any
free port; ``HostPortEnd`` above ``HostPort`` (``-p 8080-8090:80``) for the
first free one of a range. An empty ``HostIP`` means every address of each
family the container has, as Docker's bridge maps IPv4 and IPv6 with the same
host port. The parsing is pure so that unit tests hold it to every shape.
"""

from __future__ import annotations

import ipaddress
from dataclasses import asdict, dataclass
from typing import Any

from docker_cilium import u8proto
from docker_cilium.errors import BadRequest

PORTMAP_OPTION = "com.docker.network.portmap"
EXPOSED_OPTION = "com.docker.network.endpoint.exposedports"
#: Protocols a published port may use (SCTP needs the sctp module to hold a port: refused).
PROTOCOLS = {u8proto.TCP: "tcp", u8proto.UDP: "udp"}
WILDCARD = {4: "0.0.0.0", 6: "::"}


@dataclass(frozen=True)
class PortBinding:
    """One entry of ``com.docker.network.portmap``, checked."""

    proto: int
    port: int
    host_ip: str  # "" = every address
    host_port: int  # 0 = any free port
    host_port_end: int  # == host_port unless a range was asked for

    def families(self, has4: bool, has6: bool) -> list[int]:
        """The address families this binding publishes for a container with these addresses."""
        if self.host_ip:
            family = ipaddress.ip_address(self.host_ip).version
            if not (has4 if family == 4 else has6):
                raise BadRequest(f"cannot publish {self.describe()}: the container has no IPv{family} address")
            return [family]
        out = [f for f, has in ((4, has4), (6, has6)) if has]
        return out

    def candidates(self) -> range | None:
        """Host ports to try in order; None = any free port (the kernel's choice)."""
        return None if self.host_port == 0 else range(self.host_port, self.host_port_end + 1)

    def describe(self) -> str:
        ip = f"[{self.host_ip}]" if ":" in self.host_ip else self.host_ip
        hp = "" if self.host_port == 0 else (
            str(self.host_port) if self.host_port_end == self.host_port else f"{self.host_port}-{self.host_port_end}")
        return f"{ip + ':' if ip else ''}{hp}{':' if hp or ip else ''}{self.port}/{PROTOCOLS[self.proto]}"


@dataclass(frozen=True)
class Mapping:
    """One published port as the kernel carries it: host address and port -> container."""

    proto: str  # "tcp" | "udp"
    family: int
    host_ip: str  # a wildcard (0.0.0.0 / ::) or one address
    host_port: int
    container_ip: str
    container_port: int

    @property
    def wildcard(self) -> bool:
        return self.host_ip == WILDCARD[self.family]

    @property
    def loopback(self) -> bool:
        return ipaddress.ip_address(self.host_ip).is_loopback

    def to_record(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> "Mapping":
        return cls(**{k: rec[k] for k in ("proto", "family", "host_ip", "host_port", "container_ip",
                                          "container_port")})

    def to_libnetwork(self) -> dict[str, Any]:
        """libnetwork's PortBinding JSON, as dockerd's own drivers report it."""
        proto = {name: num for num, name in PROTOCOLS.items()}[self.proto]
        return {"Proto": proto, "IP": self.container_ip, "Port": self.container_port, "HostIP": self.host_ip,
                "HostPort": self.host_port, "HostPortEnd": self.host_port}

    def __str__(self) -> str:
        def hp(ip: str, port: int) -> str:
            return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
        return f"{hp(self.host_ip, self.host_port)}/{self.proto} -> {hp(self.container_ip, self.container_port)}"


def _int(value: Any, where: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"{where}: {value!r} is not an integer")
    if not low <= value <= high:
        raise BadRequest(f"{where}: {value} is out of range ({low}-{high})")
    return value


def _binding(entry: Any, where: str) -> PortBinding:
    if not isinstance(entry, dict):
        raise BadRequest(f"{where}: expected an object, got {type(entry).__name__}")
    proto = _int(entry.get("Proto", u8proto.TCP), f"{where}.Proto", 0, 255)
    if proto not in PROTOCOLS:
        name = u8proto.PROTO_NAMES.get(proto, str(proto))
        raise BadRequest(f"{where}.Proto: {name} ports cannot be published on a cilium network (tcp and udp can)")
    port = _int(entry.get("Port"), f"{where}.Port", 1, 65535)
    host_ip = entry.get("HostIP") or ""
    if not isinstance(host_ip, str):
        raise BadRequest(f"{where}.HostIP: {host_ip!r} is not an address")
    if host_ip:
        try:
            addr = ipaddress.ip_address(host_ip)
        except ValueError:
            raise BadRequest(f"{where}.HostIP: {host_ip!r} is not an IP address") from None
        if addr.version == 6 and addr.is_loopback:
            raise BadRequest(f"{where}.HostIP: ::1 cannot be forwarded to a container (IPv6 has no "
                             "route_localnet): publish on :: or the host's IPv6 address")
        if addr.is_multicast:
            raise BadRequest(f"{where}.HostIP: {host_ip} is a multicast address")
        host_ip = str(addr)
    host_port = _int(entry.get("HostPort") or 0, f"{where}.HostPort", 0, 65535)
    end = _int(entry.get("HostPortEnd") or 0, f"{where}.HostPortEnd", 0, 65535)
    if host_port == 0 and end:
        raise BadRequest(f"{where}: HostPortEnd {end} without a HostPort")
    end = end or host_port
    if end < host_port:
        raise BadRequest(f"{where}: HostPortEnd {end} is below HostPort {host_port}")
    return PortBinding(proto, port, host_ip, host_port, end)


def parse_portmap(options: dict[str, Any] | None) -> list[PortBinding]:
    """The bindings of a ProgramExternalConnectivity request (BadRequest naming the entry)."""
    raw = (options or {}).get(PORTMAP_OPTION)
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise BadRequest(f"Options[{PORTMAP_OPTION!r}]: expected a list, got {type(raw).__name__}")
    out: list[PortBinding] = []
    for i, entry in enumerate(raw):
        b = _binding(entry, f"Options[{PORTMAP_OPTION!r}][{i}]")
        if b not in out:  # dockerd repeats a binding given twice on the command line
            out.append(b)
    return out
