"""Host ports held by the agent, one bound socket per published port.

A published port is a DNAT rule; nothing in the kernel would stop a host
process from binding the same port (and silently losing its traffic) or a
second container from publishing it. As docker-proxy does, the agent binds a
socket on the host address and port of each mapping: a port another process
holds is refused with the kernel's own error, and the agent's socket keeps it
taken while the mapping lives. TCP sockets are bound but never listen, so a
connection the DNAT did not catch is refused instead of hanging; neither
kind sets SO_REUSEADDR (a bind conflicts unless both sockets set it).
"""

from __future__ import annotations

import errno
import socket
from dataclasses import dataclass

from docker_cilium.errors import APIError, BadRequest, Conflict
from docker_cilium.portmap.binding import WILDCARD, PortBinding

#: Attempts at one free port for every family when the kernel picks (``-P``).
EPHEMERAL_ATTEMPTS = 16


@dataclass
class HeldPort:
    family: int
    host_ip: str
    port: int
    sock: socket.socket


def bind(proto: str, family: int, host_ip: str, port: int) -> socket.socket:
    """A socket bound to ``host_ip:port`` (``port`` 0: the kernel picks); OSError if taken."""
    sock = socket.socket(socket.AF_INET if family == 4 else socket.AF_INET6,
                         socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
    try:
        if family == 6:
            # [::] must not also claim IPv4: the agent holds 0.0.0.0 itself.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if proto == "udp":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)  # it never reads
        sock.bind((host_ip, port))
    except BaseException:
        sock.close()
        raise
    return sock


def release(held: list[HeldPort]) -> None:
    for h in held:
        h.sock.close()


def _bind_all(proto: str, addrs: list[tuple[int, str]], port: int) -> list[HeldPort]:
    """One socket per (family, address) on ``port``: all or none."""
    held: list[HeldPort] = []
    try:
        for family, ip in addrs:
            sock = bind(proto, family, ip, port)
            port = sock.getsockname()[1]
            held.append(HeldPort(family, ip, port, sock))
    except BaseException:
        release(held)
        raise
    return held


def _taken(b: PortBinding, proto: str, addrs: list[tuple[int, str]], exc: OSError) -> APIError:
    if exc.errno == errno.EADDRNOTAVAIL:
        return BadRequest(f"cannot publish {b.describe()}: {b.host_ip} is not an address of this host")
    where = " and ".join(f"[{ip}]" if ":" in ip else ip for _, ip in addrs)
    ports = str(b.host_port) if b.host_port_end == b.host_port else f"{b.host_port}-{b.host_port_end}"
    what = "is" if b.host_port_end == b.host_port else "are all"
    reason = "already in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
    return Conflict(f"host port {ports}/{proto} on {where} {what} not available for {b.describe()}: "
                    f"bind: {reason}")


def take(b: PortBinding, proto: str, families: list[int]) -> list[HeldPort]:
    """Hold one host port for ``b`` on each family's address (the same number on
    all of them, as Docker gives IPv4 and IPv6); Conflict naming the port if
    no candidate is free."""
    addrs = [(f, b.host_ip or WILDCARD[f]) for f in families]
    candidates = b.candidates()
    last: OSError | None = None
    if candidates is None:
        for _ in range(EPHEMERAL_ATTEMPTS):
            first = bind(proto, addrs[0][0], addrs[0][1], 0)
            port = first.getsockname()[1]
            first.close()  # bound again below with the others, on this number
            try:
                return _bind_all(proto, addrs, port)
            except OSError as exc:
                last = exc
        raise Conflict(f"no free host port for {b.describe()} on every address after {EPHEMERAL_ATTEMPTS} "
                       f"attempts: {last}")
    for port in candidates:
        try:
            return _bind_all(proto, addrs, port)
        except OSError as exc:
            if exc.errno not in (errno.EADDRINUSE, errno.EACCES):
                raise _taken(b, proto, addrs, exc) from None
            last = exc
    assert last is not None
    raise _taken(b, proto, addrs, last)
