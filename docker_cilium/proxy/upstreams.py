"""The egress proxy's own upstream connections, by local address.

An egress proxy connects upstream from the host's address. When the
destination is a local endpoint with ingress L7 rules, to-container hands
that connection to the ingress proxy (hairpin), which then sees the host as
its client. The mark that carried the source identity is replaced on the
way (it now holds the ingress proxy's port), so the ingress side asks here
who really sent it: the endpoint whose egress proxy opened the connection.
"""

from __future__ import annotations

import ipaddress
import socket

from docker_cilium.proxy.peers import Peer


def _family(ip: str) -> int:
    addr = ipaddress.ip_address(ip.split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv6Address) and not addr.ipv4_mapped:
        return socket.AF_INET6
    return socket.AF_INET


class EgressUpstreams:
    """Local port of an open egress upstream socket (per family) -> its source.

    The socket is bound to the wildcard address and an ephemeral port before
    it connects, so the entry exists before the ingress proxy can accept
    the connection, and no other socket of the host holds that port."""

    def __init__(self) -> None:
        self._by_port: dict[tuple[int, int], Peer] = {}

    def add(self, family: int, port: int, source: Peer) -> None:
        self._by_port[(family, port)] = source

    def remove(self, family: int, port: int) -> None:
        self._by_port.pop((family, port), None)

    def source(self, client: tuple[str, int]) -> Peer | None:
        return self._by_port.get((_family(client[0]), client[1]))

    def __len__(self) -> int:
        return len(self._by_port)
