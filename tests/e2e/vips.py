"""Helpers for the tests where a host process reaches service VIPs (socket LB)."""

from __future__ import annotations

import socket
from contextlib import contextmanager
from typing import Iterator

from tests.helpers import run

# Blackholed on the host for the test: a connection the socket LB does not
# translate fails here instead of leaving the machine.
VIP4, VIP6 = "198.18.251.10", "fd00:dc5::10"


def server_cmd(name: str) -> tuple[str, ...]:
    """An HTTP server on port 80 whose page is ``backend-<name>``."""
    return ("sh", "-c", f"mkdir -p /tmp/w && echo backend-{name} > /tmp/w/index.html && exec httpd -f -p 80 -h /tmp/w")


@contextmanager
def blackholed_vips() -> Iterator[None]:
    for fam, addr in (("-4", f"{VIP4}/32"), ("-6", f"{VIP6}/128")):
        run("ip", fam, "route", "replace", "blackhole", addr)
    try:
        yield
    finally:
        for fam, addr in (("-4", f"{VIP4}/32"), ("-6", f"{VIP6}/128")):
            run("ip", fam, "route", "del", "blackhole", addr, check=False)


def http_get(ip: str, port: int = 80) -> tuple[str, tuple]:
    """(body, peer address) of one HTTP GET from this (host) process, or ("error:<errno>", ())."""
    fam = socket.AF_INET6 if ":" in ip else socket.AF_INET
    with socket.socket(fam, socket.SOCK_STREAM) as s:
        s.settimeout(3)
        try:
            s.connect((ip, port))
            peer = s.getpeername()[:2]
            s.sendall(b"GET / HTTP/1.0\r\n\r\n")
            data = b""
            while chunk := s.recv(4096):
                data += chunk
        except OSError as exc:
            return f"error:{exc.errno}", ()
    return data.decode().rpartition("\r\n\r\n")[2].strip(), peer
