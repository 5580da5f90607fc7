"""Stand-ins for the kernel side, so handler logic can be unit-tested without root.

These are in addition to the privileged and end-to-end tests that run the
same code against real netlink and a real dockerd, never instead of them.
"""

from __future__ import annotations

from docker_cilium.datapath.link import EndpointLink, host_ifname, peer_ifname


class FakeLinks:
    def __init__(self) -> None:
        self.links: dict[str, int] = {}
        self.routes: dict[int, tuple] = {}
        self.host_addresses: set[str] = set()
        self._next = 100

    async def link_index(self, name: str) -> int | None:
        return self.links.get(name)

    async def create_endpoint_link(self, endpoint_id: str, mtu: int, mac: str) -> EndpointLink:
        self._next += 1
        host = host_ifname(endpoint_id)
        self.links[host] = self._next
        return EndpointLink(host, self._next, "aa:bb:cc:dd:ee:ff", peer_ifname(endpoint_id), mac)

    async def add_endpoint_routes(self, ifindex, ipv4, ipv6, src4, src6, proxy_ndp) -> None:
        self.routes[ifindex] = (ipv4, ipv6, tuple(proxy_ndp))

    async def delete_endpoint_link(self, endpoint_id: str) -> bool:
        idx = self.links.pop(host_ifname(endpoint_id), None)
        if idx is not None:
            self.routes.pop(idx, None)
        return idx is not None

    async def retire_endpoint_link(self, endpoint_id: str) -> bool:
        return await self.delete_endpoint_link(endpoint_id)

    async def delete_routes(self, ipv4, ipv6) -> None:
        return None

    async def add_host_address(self, address: str) -> None:
        self.host_addresses.add(address)

    async def del_host_address(self, address: str) -> None:
        self.host_addresses.discard(address)


class FakeTries:
    """The prefilter's deny tries as a set; ``fail_on`` makes inserting that prefix fail."""

    def __init__(self) -> None:
        self.nets: set = set()
        self.fail_on = None

    def insert(self, net) -> None:
        if net == self.fail_on:
            raise OSError(28, "No space left on device")
        self.nets.add(net)

    def delete(self, net) -> bool:
        found = net in self.nets
        self.nets.discard(net)
        return found

    def dump(self) -> list:
        return list(self.nets)
