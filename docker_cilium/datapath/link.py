"""Netlink plumbing for endpoints: veth pairs, host routes, proxy NDP, sysctls.

All calls go through one pyroute2 ``IPRoute`` socket owned by a single worker
thread: pyroute2 0.9's synchronous API refuses to run inside a running event
loop, and forking ``ip``/``sysctl`` costs 10-20 ms per call, which would
dominate endpoint creation. One thread also serialises netlink requests, so
replies can never interleave.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import ipaddress
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

import structlog
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl.ifaddrmsg import IFA_F_NODAD

from docker_cilium import defaults
from docker_cilium.datapath.nlbatch import (Batcher, RequestError, del_link_request, del_route_request,
                                             get_link_request, link_down_request, link_index_and_mac,
                                             proxy_neigh_request, route_request, veth_request)

log = structlog.get_logger(__name__)

T = TypeVar("T")
RT_SCOPE_LINK = 253
RT_TABLE_MAIN = 254
RTN_UNICAST = 1
IFF_NOARP = 0x80
PEER_IFNAME_PREFIX = "tmp"


def _endpoint_hash(endpoint_id: str) -> str:
    return hashlib.sha256(endpoint_id.encode()).hexdigest()[:12]


def host_ifname(endpoint_id: str) -> str:
    """``lxc`` + 12 hex of sha256(EndpointID): stable, unique, fits IFNAMSIZ."""
    return defaults.ENDPOINT_IFNAME_PREFIX + _endpoint_hash(endpoint_id)


def peer_ifname(endpoint_id: str) -> str:
    """The container side before dockerd renames it ``cilium<N>``: ``tmp`` + the
    same 12 hex as the host side. Derived from the whole EndpointID, so two
    endpoints whose IDs share a prefix never get one name (and never delete
    each other's link as a leftover)."""
    return PEER_IFNAME_PREFIX + _endpoint_hash(endpoint_id)


def is_endpoint_ifname(name: str) -> bool:
    """Whether ``name`` is a host-side endpoint veth of ours (``lxc`` + 12 hex)."""
    prefix = defaults.ENDPOINT_IFNAME_PREFIX
    tail = name[len(prefix):]
    return name.startswith(prefix) and len(tail) == 12 and all(c in "0123456789abcdef" for c in tail)


def container_mac(endpoint_id: str) -> str:
    """A stable locally administered unicast MAC, so `docker inspect` can show it."""
    raw = bytearray(hashlib.sha256(b"mac:" + endpoint_id.encode()).digest()[:6])
    raw[0] = (raw[0] & 0xFE) | 0x02
    return ":".join(f"{b:02x}" for b in raw)


def write_sysctl(path: str, value: str) -> None:
    """Write /proc/sys directly: no fork, and an error names the knob."""
    with open("/proc/sys/" + path.replace(".", "/"), "w") as f:
        f.write(value)


@dataclass(frozen=True)
class EndpointLink:
    host_ifname: str
    host_ifindex: int
    host_mac: str
    peer_ifname: str
    peer_mac: str


class LinkManager:
    """Owns the netlink socket; every public coroutine is one round trip batch."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="netlink")
        self._ipr: IPRoute | None = None
        self._batch = Batcher()
        # Endpoint veths are deleted here, off the critical path (the kernel
        # takes tens of ms: an RCU grace period), on a socket of its own.
        self._reaper = ThreadPoolExecutor(max_workers=1, thread_name_prefix="netlink-reaper")
        self._reaper_batch = Batcher()

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def _ip(self) -> IPRoute:
        if self._ipr is None:
            self._ipr = IPRoute()
        return self._ipr

    async def close(self) -> None:
        def _close() -> None:
            self._batch.close()
            if self._ipr is not None:
                self._ipr.close()
                self._ipr = None

        await self._run(_close)
        self._pool.shutdown(wait=True)
        self._reaper.shutdown(wait=True)  # the veths being deleted are gone before we exit
        self._reaper_batch.close()

    # ---- queries -----------------------------------------------------------------

    def _index(self, name: str) -> int | None:
        found = self._ip().link_lookup(ifname=name)
        return found[0] if found else None

    async def link_index(self, name: str) -> int | None:
        return await self._run(self._index, name)

    async def uplink_mtu(self) -> int:
        """MTU of the device carrying the default route (1400 on our VMs)."""

        def _mtu() -> int:
            ip = self._ip()
            for route in ip.get_default_routes(family=2):
                # the main table's: other tables have defaults too (the L7
                # proxy's "local default dev lo table 2004", lo's MTU 65536)
                if route.get_attr("RTA_TABLE") != RT_TABLE_MAIN or route["type"] != RTN_UNICAST:
                    continue
                oif = route.get("oif")
                if oif:
                    return int(ip.get_links(oif)[0].get("mtu"))
            return defaults.DEFAULT_MTU

        return await self._run(_mtu)

    async def first_global_ipv4(self) -> str | None:
        """The node IP: first global IPv4 not on a device we or Docker created."""

        def _find() -> str | None:
            ip = self._ip()
            names = {l["index"]: l.get("ifname") for l in ip.get_links()}
            skip = ("lo", "cilium_", "lxc", "docker", "br-", "veth", "tmp")
            for addr in ip.get_addr(family=2):
                name = names.get(addr["index"], "")
                if addr["scope"] != 0 or any(name.startswith(p) for p in skip):
                    continue
                return addr.get("address")
            return None

        return await self._run(_find)

    async def host_addresses(self) -> list[str]:
        """Every address of this host (root namespace): they map to identity host."""

        def _all() -> list[str]:
            out = []
            for addr in self._ip().get_addr():
                ip = addr.get("address")
                if ip and not ip.startswith("fe80:"):
                    out.append(ip)
            return sorted(set(out))

        return await self._run(_all)

    # ---- node set-up ---------------------------------------------------------------

    async def ensure_host_device(self, router4: str, router6: str | None, mtu: int) -> int:
        """cilium_host <-> cilium_net veth carrying the router addresses.

        A veth, not a dummy: dummy links need CONFIG_DUMMY, which some kernels
        are built without, while veth is there wherever containers run; Cilium
        used the same pair. Returns cilium_host's ifindex.
        """

        def _ensure() -> int:
            ip = self._ip()
            idx = self._index(defaults.HOST_DEVICE)
            if idx is None:
                ip.link("add", ifname=defaults.HOST_DEVICE, kind="veth",
                        peer={"ifname": defaults.HOST_PEER_DEVICE}, mtu=mtu)
                idx = self._index(defaults.HOST_DEVICE)
            assert idx is not None
            peer = self._index(defaults.HOST_PEER_DEVICE)
            # no ARP (neighbours resolve to its own MAC): routes to other nodes'
            # ranges leave by it, to be encapsulated by to-overlay, through a
            # gateway that is a local address, which nothing would answer for
            ip.link("set", index=idx, flags=IFF_NOARP, mask=IFF_NOARP)  # (not with state=: it sets flags)
            ip.link("set", index=idx, state="up", mtu=mtu)
            if peer is not None:
                ip.link("set", index=peer, state="up", mtu=mtu)
            write_sysctl("net.ipv4.ip_forward", "1")
            write_sysctl(f"net.ipv4.conf.{defaults.HOST_DEVICE}.rp_filter", "0")
            # connections to-container hands to the ingress proxy enter the
            # stack here, the host's own among them (source a local address)
            write_sysctl(f"net.ipv4.conf.{defaults.HOST_DEVICE}.accept_local", "1")
            self._add_addr(idx, router4, 32)
            if router6:
                write_sysctl("net.ipv6.conf.all.forwarding", "1")
                write_sysctl(f"net.ipv6.conf.{defaults.HOST_DEVICE}.disable_ipv6", "0")
                self._add_addr(idx, router6, 128)
            return idx

        return await self._run(_ensure)

    def _add_addr(self, idx: int, address: str, prefixlen: int) -> None:
        try:
            kw: dict[str, Any] = {}
            if ipaddress.ip_address(address).version == 6:
                kw["flags"] = IFA_F_NODAD  # usable at once (no tentative period)
            self._ip().addr("add", index=idx, address=address, prefixlen=prefixlen, **kw)
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise

    async def add_host_address(self, address: str) -> None:
        """Put a (Docker-IPAM) pool gateway on cilium_host so containers reach it."""

        def _add() -> None:
            idx = self._index(defaults.HOST_DEVICE)
            if idx is None:
                raise RuntimeError("cilium_host is missing")
            ip = ipaddress.ip_address(address)
            self._add_addr(idx, address, 32 if ip.version == 4 else 128)

        await self._run(_add)

    async def del_host_address(self, address: str) -> None:
        def _del() -> None:
            idx = self._index(defaults.HOST_DEVICE)
            if idx is None:
                return
            ip = ipaddress.ip_address(address)
            try:
                self._ip().addr("del", index=idx, address=address, prefixlen=32 if ip.version == 4 else 128)
            except NetlinkError as exc:
                if exc.code not in (errno.EADDRNOTAVAIL, errno.ENOENT, errno.ENODEV):
                    raise

        await self._run(_del)

    # ---- endpoints ---------------------------------------------------------------

    async def create_endpoint_link(self, endpoint_id: str, mtu: int, mac: str) -> EndpointLink:
        """Create the veth pair, up; the peer stays in our namespace until dockerd moves it.

        One netlink round trip (``nlbatch``): the add (with IFF_UP: the peer
        has no namespace or address yet, so nothing flows before the routes
        and programs are in place) and the read of the host side's index and
        MAC; a pair a crash mid-create left is deleted only when the add
        finds it (no lookups up front: each costs as much as the add).
        """

        def _create() -> EndpointLink:
            host, peer = host_ifname(endpoint_id), peer_ifname(endpoint_id)
            batch = [veth_request(host, mtu, peer, mac), get_link_request(host)]
            try:
                reply = self._batch.send(batch)[1]
            except RequestError as exc:
                if exc.errno != errno.EEXIST:
                    raise
                for stale in (host, peer):  # left over by a crash mid-create
                    idx = self._index(stale)
                    if idx is not None:
                        self._ip().link("del", index=idx)
                reply = self._batch.send(batch)[1]
            hidx, host_mac = link_index_and_mac(reply)
            for knob, val in (("rp_filter", "0"), ("proxy_arp", "1"), ("send_redirects", "0"), ("accept_local", "1")):
                write_sysctl(f"net.ipv4.conf.{host}.{knob}", val)
            try:
                write_sysctl(f"net.ipv6.conf.{host}.proxy_ndp", "1")
                write_sysctl(f"net.ipv6.conf.{host}.forwarding", "1")
                # Proxied neighbour answers are otherwise delayed up to 0.8 s.
                write_sysctl(f"net.ipv6.neigh.{host}.proxy_delay", "0")
            except OSError:
                pass  # IPv6 disabled on the host
            return EndpointLink(host, hidx, host_mac, peer, mac)

        return await self._run(_create)

    async def add_endpoint_routes(self, ifindex: int, ipv4: str | None, ipv6: str | None,
                                  src4: str | None, src6: str | None, proxy_ndp: list[str]) -> None:
        """Host routes /32 and /128 to the endpoint, and proxy NDP for its gateways.

        The routes carry the router as source address: host-originated traffic
        then comes from a host address the ipcache maps to identity ``host``.

        IPv4 needs no proxy for the router: it is a local address, which Linux
        answers ARP for on any interface. IPv6 neighbour discovery is per
        interface, so the router6 needs a proxy entry on each lxc device.
        """

        def _routes() -> None:
            reqs = []
            if ipv4:
                reqs.append(route_request(f"{ipv4}", ifindex, RT_SCOPE_LINK, src4))
            if ipv6:
                reqs.append(route_request(f"{ipv6}", ifindex, 0, src6))
            reqs += [proxy_neigh_request(addr, ifindex) for addr in proxy_ndp]
            if reqs:
                self._batch.send(reqs)  # one round trip: on every endpoint's critical path

        await self._run(_routes)

    async def retire_endpoint_link(self, endpoint_id: str) -> bool:
        """Take the endpoint's veth down now and delete it in the background.

        Down, no packet crosses the pair, so the caller may remove its map
        entries and routes at once; the delete itself (tens of ms in the
        kernel) no longer holds up the reply. It goes by ifindex, so a veth
        of the same name made meanwhile is never the one deleted; one an
        agent crash leaves behind is the start-up orphan sweep's. Returns
        whether the veth was there (if not, any leftover peer is deleted now).
        """

        def _down() -> int | None:
            try:
                reply = self._batch.send([link_down_request(host_ifname(endpoint_id)),
                                          get_link_request(host_ifname(endpoint_id))])[1]
            except RequestError as exc:
                if exc.errno != errno.ENODEV:
                    raise
                return None
            return link_index_and_mac(reply)[0]

        idx = await self._run(_down)
        if idx is None:
            return await self.delete_endpoint_link(endpoint_id)
        self._reaper.submit(self._reap, idx)
        return True

    def _reap(self, index: int) -> None:
        try:
            self._reaper_batch.send([del_link_request(index)])
        except Exception as exc:  # the orphan sweep at the next start removes it
            log.warning("endpoint.link_delete_failed", ifindex=index, error=str(exc))

    async def delete_endpoint_link(self, endpoint_id: str) -> bool:
        """Remove the veth pair; its routes and proxy entries go with it."""

        def _delete() -> bool:
            removed = False
            for name in (host_ifname(endpoint_id), peer_ifname(endpoint_id)):
                idx = self._index(name)
                if idx is not None:
                    try:
                        self._ip().link("del", index=idx)
                        removed = True
                    except NetlinkError as exc:
                        if exc.code != errno.ENODEV:
                            raise
            return removed

        return await self._run(_delete)

    # ---- orphans (what a crash left behind) ---------------------------------------

    async def endpoint_links(self) -> dict[str, int]:
        """Host-side endpoint veths present now (name -> ifindex)."""

        def _list() -> dict[str, int]:
            out = {}
            for link in self._ip().get_links():
                name = link.get("ifname") or ""
                if is_endpoint_ifname(name):
                    out[name] = link["index"]
            return out

        return await self._run(_list)

    async def delete_link(self, name: str) -> bool:
        """Delete one link by name (its veth peer and routes go with it)."""

        def _delete() -> bool:
            idx = self._index(name)
            if idx is None:
                return False
            try:
                self._ip().link("del", index=idx)
            except NetlinkError as exc:
                if exc.code != errno.ENODEV:
                    raise
                return False
            return True

        return await self._run(_delete)

    async def delete_orphan_routes(self, ranges: list[Any], keep_ifindexes: set[int]) -> list[str]:
        """Remove main-table host routes (``/32``, ``/128``) into ``ranges`` that
        leave by an endpoint veth other than ``keep_ifindexes`` (the live
        endpoints'); returns the destinations removed. Routes by any other
        device (cilium_host's own prefix routes among them) are not ours."""

        def _sweep() -> list[str]:
            ip = self._ip()
            veths = {l["index"] for l in ip.get_links() if is_endpoint_ifname(l.get("ifname") or "")}
            removed = []
            for family, plen in ((2, 32), (10, 128)):
                for route in ip.get_routes(family=family, table=RT_TABLE_MAIN):
                    dst, oif = route.get_attr("RTA_DST"), route.get_attr("RTA_OIF")
                    if route["dst_len"] != plen or not dst or oif not in veths or oif in keep_ifindexes:
                        continue
                    addr = ipaddress.ip_address(dst)
                    if not any(addr in net for net in ranges if net.version == addr.version):
                        continue
                    try:
                        ip.route("del", dst=f"{dst}/{plen}", oif=oif, table=RT_TABLE_MAIN)
                        removed.append(f"{dst}/{plen}")
                    except NetlinkError as exc:
                        if exc.code not in (errno.ESRCH, errno.ENOENT):
                            raise
            return removed

        return await self._run(_sweep)

    async def delete_routes(self, ipv4: str | None, ipv6: str | None) -> None:
        """Drop host routes left behind when the link is already gone."""

        def _delete() -> None:
            reqs = [del_route_request(a) for a in (ipv4, ipv6) if a]
            if reqs:
                self._batch.send(reqs)

        await self._run(_delete)
