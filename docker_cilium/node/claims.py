"""Node allocation ranges claimed through the cluster store, so no two nodes share one.

Cilium 1.x derived a node's range from its address (``10.X.0.0/16``, X the
last byte of the node IP): two hosts 192.168.1.5 and 192.168.2.5 both got
10.5.0.0/16. Here the derived range stays the first choice, but a node only
uses a range after winning ``create_only`` on its claim key
(``cilium/state/noderanges/v1/<range>`` -> owner); on conflict it takes the
next free ``10.N.0.0/16`` (N counting up from X, wrapping) and the IPv6
range that goes with it (``f00d::`` + the IPv4 range in hex, /96), so the
IPv6 ranges never overlap either.

Claims are persistent (not on the session lease): a node that restarts, or
comes back after a crash, finds its own claim and gets the same ranges;
nobody else can take them meanwhile. ``--ipv4-range``/``--ipv6-range`` still
win: a flag range is claimed when free and used regardless (with a warning
when another node holds it).
"""

from __future__ import annotations

import ipaddress
import json

import structlog

from docker_cilium.errors import InsufficientStorage
from docker_cilium.ipam.ranges import NodeAddressing, ipv4_range_for, ipv6_range_for
from docker_cilium.kvstore import keys
from docker_cilium.kvstore.backend import Backend

log = structlog.get_logger(__name__)

#: Every range a node may be given: 10.0.0.0/16 .. 10.255.0.0/16.
POOL = ipaddress.IPv4Network("10.0.0.0/8")
RANGE_PREFIXLEN = 16


class RangesExhausted(InsufficientStorage):
    """Every /16 of the pool is claimed by another node."""


def candidates(first: ipaddress.IPv4Network) -> list[ipaddress.IPv4Network]:
    """The ranges to try, in order: ``first``, then the following /16s of the pool, wrapping."""
    subnets = list(POOL.subnets(new_prefix=RANGE_PREFIXLEN))
    start = subnets.index(first) if first in subnets else 0
    return subnets[start:] + subnets[:start]


class RangeClaims:
    """Claims this node's allocation ranges in the cluster store."""

    def __init__(self, backend: Backend, node_name: str, *, prefix: str = keys.NODE_RANGES) -> None:
        self.backend = backend
        self.node_name = node_name
        self.prefix = prefix

    def _value(self, v4: ipaddress.IPv4Network) -> bytes:
        return json.dumps({"node": self.node_name, "ipv4": str(v4), "ipv6": str(ipv6_range_for(v4))}).encode()

    @staticmethod
    def _owner(raw: bytes | None) -> str | None:
        if raw is None:
            return None
        try:
            return str(json.loads(raw)["node"])
        except (ValueError, KeyError, TypeError):
            return "<unreadable claim>"

    async def claims(self) -> dict[str, str]:
        """Every claimed IPv4 range -> its owner."""
        raw = await self.backend.get_prefix(self.prefix)
        return {k[len(self.prefix):]: self._owner(v) or "" for k, v in raw.items()}

    async def claim(self, node_ip: str, ipv4_range: str | None = None,
                    ipv6_range: str | None = None) -> NodeAddressing:
        """This node's ranges: its own earlier claim, else the derived range, else the next free one."""
        if ipv4_range:
            v4 = ipaddress.IPv4Network(ipv4_range)
            await self._claim_flag(v4)
        else:
            v4 = await self._claim_free(ipv4_range_for(node_ip))
        v6 = ipaddress.IPv6Network(ipv6_range) if ipv6_range else ipv6_range_for(v4)
        log.info("node.ranges_claimed", node=self.node_name, ipv4_range=str(v4), ipv6_range=str(v6))
        return NodeAddressing(node_ip=node_ip, ipv4_range=v4, ipv6_range=v6)

    async def _claim_flag(self, v4: ipaddress.IPv4Network) -> None:
        if await self._try(v4):
            return
        log.warning("node.range_claimed_by_other", node=self.node_name, ipv4_range=str(v4),
                    owner=self._owner(await self.backend.get(self.prefix + str(v4))),
                    hint="--ipv4-range wins: the two nodes' ranges overlap")

    async def _claim_free(self, derived: ipaddress.IPv4Network) -> ipaddress.IPv4Network:
        order = candidates(derived)
        held = await self.claims()
        for net in order:  # our own claim from an earlier run (restart, crash)
            if held.get(str(net)) == self.node_name:
                return net
        for net in order:
            if str(net) in held:
                continue
            if await self._try(net):
                if net != derived:
                    log.info("node.range_conflict", node=self.node_name, derived=str(derived),
                             owner=held.get(str(derived)) or self._owner(
                                 await self.backend.get(self.prefix + str(derived))), chosen=str(net))
                return net
        raise RangesExhausted(f"every /{RANGE_PREFIXLEN} of {POOL} is claimed by another node")

    async def _try(self, net: ipaddress.IPv4Network) -> bool:
        """Claim ``net``; True if it is ours now (just created, or ours already)."""
        key = self.prefix + str(net)
        if await self.backend.create_only(key, self._value(net)):
            return True
        return self._owner(await self.backend.get(key)) == self.node_name
