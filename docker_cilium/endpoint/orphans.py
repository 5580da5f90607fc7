"""Collect, once at start, what no restored endpoint owns in the kernel.

Restore undoes the creates and deletes a crash interrupted from their store
records; this sweep catches anything else a crash (or an older version) left:
``lxc`` veths, node-range host routes leaving by a device no endpoint has,
and ``cilium_ep_ifindex``, ``cilium_lxc`` and ``cilium_policy`` entries of
endpoints that do not exist. It runs after the restored endpoints got their
datapath back and before the plugin socket opens, so no create is under way.
"""

from __future__ import annotations

import asyncio
from typing import Iterable

import structlog

from docker_cilium.datapath.link import LinkManager
from docker_cilium.datapath.maps.registry import DatapathMaps
from docker_cilium.endpoint.model import Endpoint
from docker_cilium.ipam.ranges import NodeAddressing

log = structlog.get_logger(__name__)


def _sweep_maps(maps: DatapathMaps, ifindexes: set[int], addrs: set[str], ids: set[int]) -> dict[str, list]:
    stale_ifindexes = [i.ifindex for i in maps.endpoints.dump() if i.ifindex not in ifindexes]
    for ifindex in stale_ifindexes:
        maps.endpoints.delete(ifindex)
    stale_addrs = [a for a in maps.endpoints.addresses() if a not in addrs]
    for addr in stale_addrs:
        maps.endpoints.delete_address(addr)
    stale_ids = sorted({s.lxc_id for s in maps.policy.dump(include_markers=True)} - ids)
    for lxc_id in stale_ids:
        maps.policy.delete_endpoint(lxc_id)
    return {"ep-ifindex": stale_ifindexes, "lxc": stale_addrs, "policy": stale_ids}


async def collect_orphans(links: LinkManager, maps: DatapathMaps | None, endpoints: Iterable[Endpoint],
                          node: NodeAddressing) -> dict[str, list]:
    """Remove what ``endpoints`` (all the agent knows) do not own; returns what went."""
    live = list(endpoints)
    names = {ep.ifname for ep in live}
    removed: dict[str, list] = {"links": []}
    for name in sorted(await links.endpoint_links()):
        if name not in names and await links.delete_link(name):
            removed["links"].append(name)
    ifindexes = {ep.ifindex for ep in live if ep.ifindex}
    removed["routes"] = await links.delete_orphan_routes([node.ipv4_range, node.ipv6_range], ifindexes)
    if maps is not None:
        addrs = {a for ep in live for a in (ep.ipv4, ep.ipv6) if a}
        removed.update(await asyncio.to_thread(_sweep_maps, maps, ifindexes, addrs, {ep.id for ep in live}))
    if any(removed.values()):
        log.warning("endpoint.orphans_removed", **removed)
    return removed
