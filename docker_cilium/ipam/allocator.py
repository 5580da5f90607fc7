"""Address allocation from the node's ranges, persisted before it is returned.

Every allocation is a ``create_only`` write of ``cilium/state/ipam/v1/<ip>``
in the node store: the write is durable before the caller sees the address,
so neither a restart nor a crash (kill -9 between two requests) can ever hand
the same address out twice. The in-memory set is only a cache rebuilt from the
store at start.

Pools are encoded in their ID (``CiliumPoolv4``, ``CiliumPoolv4:<subnet>`` or
``CiliumPoolv4:<subnet>:<ip-range>``) so the IPAM driver needs no pool state
of its own: dockerd replays PoolIDs it stored across our restarts and we can
decode them without having persisted anything.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import time
from dataclasses import dataclass
from typing import Union

import structlog

from docker_cilium import faults
from docker_cilium.errors import AllocationFailed, BadRequest, Conflict
from docker_cilium.ipam.ranges import NodeAddressing
from docker_cilium.kvstore import keys
from docker_cilium.kvstore.backend import Backend

log = structlog.get_logger(__name__)

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

PREFIX = keys.IPAM
POOL_V4 = "CiliumPoolv4"
POOL_V6 = "CiliumPoolv6"
# The address spaces this IPAM driver announces to dockerd (GetDefaultAddressSpaces
# replies them under LocalDefaultAddressSpace / GlobalDefaultAddressSpace);
# a network whose pools name one of them is on our IPAM.
ADDRESS_SPACE_LOCAL = "CiliumLocal"
ADDRESS_SPACE_GLOBAL = "CiliumGlobal"
CILIUM_ADDRESS_SPACES = frozenset({ADDRESS_SPACE_LOCAL, ADDRESS_SPACE_GLOBAL})
# Owners recorded with an address: dockerd's RequestAddress, then the endpoint
# it was given to (endpoint_owner); gateways and /v1/ipam callers have others.
OWNER_DOCKER = "docker"
_ENDPOINT_OWNER = "endpoint "


def endpoint_owner(endpoint_id: int) -> str:
    """The owner recorded for an address endpoint ``endpoint_id`` holds."""
    return f"{_ENDPOINT_OWNER}{endpoint_id}"


def owned_by_docker(owner: str) -> bool:
    """Whether dockerd asked for the address (RequestAddress, or the endpoint
    CreateEndpoint then gave it to)."""
    return owner == OWNER_DOCKER or owner.startswith(_ENDPOINT_OWNER)


class IPAMError(BadRequest):
    """A request the IPAM refuses as asked (400); the message is shown to the user.

    An address someone holds is a ``Conflict`` (409) and an exhausted pool an
    ``AllocationFailed`` (502) instead."""


@dataclass(frozen=True)
class Pool:
    """A slice of a node range that one Docker network allocates from."""

    family: int
    network: IPNetwork
    subpool: IPNetwork | None = None
    whole_range: bool = True

    @property
    def id(self) -> str:
        base = POOL_V4 if self.family == 4 else POOL_V6
        if self.whole_range:
            return base
        if self.subpool is not None:
            return f"{base}:{self.network}:{self.subpool}"
        return f"{base}:{self.network}"

    @property
    def allocation_range(self) -> IPNetwork:
        return self.subpool if self.subpool is not None else self.network

    @property
    def host_prefixlen(self) -> int:
        return 32 if self.family == 4 else 128


class IPAM:
    """Hands out /32 and /128 addresses from the node ranges.

    Allocation scans forward from a moving cursor rather than always taking the
    lowest free address, so a just-released address is not immediately reused
    (stale conntrack or ARP entries of the previous owner then do no harm).
    """

    def __init__(self, store: Backend, node: NodeAddressing, enable_ipv4: bool = True, enable_ipv6: bool = True) -> None:
        self.store = store
        self.node = node
        self.enable_ipv4 = enable_ipv4
        self.enable_ipv6 = enable_ipv6
        self._allocated: dict[IPAddress, dict] = {}
        self._cursor: dict[int, int] = {4: 0, 6: 0}
        self._lock = asyncio.Lock()

    # ---- pools -------------------------------------------------------------------

    def node_range(self, family: int) -> IPNetwork:
        return self.node.ipv4_range if family == 4 else self.node.ipv6_range

    def router(self, family: int) -> IPAddress:
        return self.node.router4 if family == 4 else self.node.router6

    def request_pool(self, v6: bool, pool: str = "", subpool: str = "") -> Pool:
        """Resolve a Docker RequestPool into one of our pools.

        ``--subnet`` must equal or lie inside the node range (several networks
        share the node's pool); Cilium's documented ``--subnet ::1/112`` is the
        conventional "give me the node's IPv6 range" and maps to the whole range.
        """
        family = 6 if v6 else 4
        if family == 4 and not self.enable_ipv4:
            raise IPAMError("IPv4 is disabled on this agent")
        if family == 6 and not self.enable_ipv6:
            raise IPAMError("IPv6 is disabled on this agent (--enable-ipv6=false)")
        node_range = self.node_range(family)
        if not pool or (family == 6 and pool == "::1/112"):
            if subpool:
                raise IPAMError("--ip-range needs --subnet with the cilium IPAM driver")
            return Pool(family, node_range)
        try:
            network = ipaddress.ip_network(pool, strict=True)
        except ValueError as exc:
            raise IPAMError(f"invalid pool {pool!r}: {exc}") from None
        if network.version != family:
            raise IPAMError(f"pool {pool} is not an IPv{family} subnet")
        if not network.subnet_of(node_range):  # type: ignore[arg-type]
            raise IPAMError(
                f"subnet {network} is outside this node's IPv{family} range {node_range}: "
                f"use a --subnet inside {node_range}, or omit --subnet"
            )
        sub = None
        if subpool:
            try:
                sub = ipaddress.ip_network(subpool, strict=True)
            except ValueError as exc:
                raise IPAMError(f"invalid --ip-range {subpool!r}: {exc}") from None
            if sub.version != family or not sub.subnet_of(network):  # type: ignore[arg-type]
                raise IPAMError(f"--ip-range {sub} is not inside --subnet {network}")
        return Pool(family, network, sub, whole_range=network == node_range and sub is None)

    def decode_pool_id(self, pool_id: str) -> Pool:
        """The pool ``pool_id`` names, checked as ``request_pool`` checked it.

        dockerd hands back the IDs RequestPool gave it, but the ID is all we
        get: a forged or stale one (another family's subnet, a subnet outside
        the node range, a range that changed with ``--ipv4-range``) would
        otherwise make us allocate addresses we do not own. Only the exact ID
        RequestPool would give for that pool today is accepted.
        """
        base, _, rest = pool_id.partition(":")
        if base not in (POOL_V4, POOL_V6):
            raise IPAMError(f"unknown pool {_cut(pool_id)!r}: cilium pool IDs start with {POOL_V4} or {POOL_V6}")
        net_s = sub_s = ""
        if rest:
            try:
                net_s, _, sub_s = _split_pool_rest(rest)
            except ValueError:
                raise IPAMError(f"malformed pool ID {_cut(pool_id)!r}: expected {base}[:<subnet>[:<ip-range>]]") from None
        try:
            pool = self.request_pool(base == POOL_V6, net_s, sub_s)
        except IPAMError as exc:
            raise IPAMError(f"pool {_cut(pool_id)!r} is not a pool of this node: {exc.message}") from None
        if pool.id != pool_id:
            raise IPAMError(f"malformed pool ID {_cut(pool_id)!r}: this pool's ID is {pool.id!r}")
        return pool

    def gateway(self, pool: Pool) -> str:
        return f"{self.router(pool.family)}/{pool.host_prefixlen}"

    # ---- allocations ------------------------------------------------------------

    async def restore(self) -> int:
        """Rebuild the cache from the store; returns how many addresses are held."""
        entries = await self.store.get_prefix(PREFIX)
        self._allocated = {}
        for key, raw in entries.items():
            try:
                self._allocated[ipaddress.ip_address(key[len(PREFIX):])] = json.loads(raw)
            except ValueError:
                log.warning("ipam.restore.bad_entry", key=key)
        return len(self._allocated)

    def _reserved(self, ip: IPAddress, family: int) -> bool:
        rng = self.node_range(family)
        if ip == rng.network_address or ip == self.router(family):
            return True
        return family == 4 and ip == rng.broadcast_address  # type: ignore[union-attr]

    async def allocate(self, pool: Pool, owner: str, address: str = "") -> IPAddress:
        """Claim ``address`` (or the next free one) in ``pool`` for ``owner``."""
        async with self._lock:
            if address:
                ip = await self._allocate_specific(pool, owner, address)
            else:
                ip = await self._allocate_next(pool, owner)
        faults.point("ipam-allocate-before-reply")
        return ip

    async def _allocate_specific(self, pool: Pool, owner: str, address: str) -> IPAddress:
        try:
            ip = ipaddress.ip_address(address.split("/")[0])
        except ValueError:
            raise IPAMError(f"invalid IP address {address!r}") from None
        if ip.version != pool.family:
            raise IPAMError(f"{ip} is not an IPv{pool.family} address")
        if ip not in pool.allocation_range:
            raise IPAMError(f"IP {ip} is outside pool {pool.allocation_range}")
        if ip == self.router(pool.family):
            # The router lives on cilium_host: dockerd may name it as the
            # network's --gateway, but no endpoint may ever hold it.
            if owner == "gateway":
                return ip
            raise IPAMError(f"IP {ip} is the node's router address and cannot be given to a container")
        if self._reserved(ip, pool.family):
            raise IPAMError(f"IP {ip} is reserved in {self.node_range(pool.family)}")
        if ip in self._allocated or not await self._claim(ip, owner, pool):
            holder = self._allocated.get(ip, {}).get("owner", "another endpoint")
            raise Conflict(f"IP {ip} is already allocated (to {holder})")
        return ip

    async def _allocate_next(self, pool: Pool, owner: str) -> IPAddress:
        rng = pool.allocation_range
        first = int(rng.network_address)
        size = rng.num_addresses
        start = self._cursor[pool.family]
        for step in range(size):
            offset = (start + step) % size
            ip = ipaddress.ip_address(first + offset)
            if ip in self._allocated or self._reserved(ip, pool.family):
                continue
            if await self._claim(ip, owner, pool):
                self._cursor[pool.family] = offset + 1
                return ip
        raise AllocationFailed(f"no free address left in {rng}")

    async def _claim(self, ip: IPAddress, owner: str, pool: Pool) -> bool:
        record = {"owner": owner, "pool": pool.id, "time": int(time.time())}
        created = await self.store.create_only(PREFIX + str(ip), json.dumps(record).encode())
        if created:
            self._allocated[ip] = record
        else:
            # Someone else (another process on this store) holds it: learn that.
            raw = await self.store.get(PREFIX + str(ip))
            if raw is not None:
                self._allocated[ip] = json.loads(raw)
        return created

    async def release(self, address: str, pool: Pool | None = None) -> bool:
        """Free ``address``; unknown addresses and the router are a no-op.

        With ``pool`` (dockerd's ReleaseAddress) the address must lie in it
        and have been allocated from it: one network must not free another's.
        """
        try:
            ip = ipaddress.ip_address(address.split("/")[0])
        except ValueError:
            raise IPAMError(f"invalid IP address {_cut(address)!r}") from None
        if ip in (self.node.router4, self.node.router6):
            return False
        if pool is not None and (ip.version != pool.family or ip not in pool.allocation_range):
            raise IPAMError(f"IP {ip} is outside pool {pool.allocation_range} ({pool.id})")
        async with self._lock:
            held_by = self._allocated.get(ip, {}).get("pool")
            if pool is not None and held_by is not None and held_by != pool.id:
                raise Conflict(f"IP {ip} was allocated from pool {held_by}, not {pool.id}")
            self._allocated.pop(ip, None)
            return await self.store.delete(PREFIX + str(ip))

    async def set_owner(self, address: str, owner: str) -> None:
        """Record which endpoint holds an address (for `cilium status` and leaks)."""
        ip = ipaddress.ip_address(address.split("/")[0])
        async with self._lock:
            rec = self._allocated.get(ip)
            if rec is None or rec.get("owner") == owner:
                return
            new = dict(rec, owner=owner)
            if await self.store.compare_and_swap(PREFIX + str(ip), json.dumps(rec).encode(), json.dumps(new).encode()):
                self._allocated[ip] = new

    def allocations(self) -> dict[str, dict]:
        return {str(ip): rec for ip, rec in sorted(self._allocated.items(), key=lambda kv: (kv[0].version, kv[0]))}

    def status(self) -> dict[str, str]:
        v4 = sum(1 for ip in self._allocated if ip.version == 4)
        v6 = sum(1 for ip in self._allocated if ip.version == 6)
        return {
            "ipv4": f"{v4}/{self.node.ipv4_range.num_addresses - 3} allocated from {self.node.ipv4_range}",
            "ipv6": f"{v6}/{self.node.ipv6_range.num_addresses - 2} allocated from {self.node.ipv6_range}",
        }


def _cut(text: str) -> str:
    """A request's string for an error message, cut short."""
    return text if len(text) <= 100 else f"{text[:100]}..."


def _split_pool_rest(rest: str) -> tuple[str, str, str]:
    """Split ``<net>[:<sub>]`` where both may be IPv6 CIDRs containing ':'."""
    slash = rest.find("/")
    if slash < 0:
        raise ValueError(rest)
    colon = rest.find(":", slash)
    if colon < 0:
        return rest, "", ""
    return rest[:colon], ":", rest[colon + 1:]
