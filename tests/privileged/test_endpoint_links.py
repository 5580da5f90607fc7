"""Endpoint veths on the real kernel: concurrent creates never share a name.

Docker endpoint IDs that share their first characters used to get one
container-side name (``tmp`` + 5 characters); the second create then deleted
the first one's pair as a "leftover". Each test removes every link it made.
"""

from __future__ import annotations

import asyncio
import uuid

from pyroute2 import IPRoute

from docker_cilium.datapath.link import LinkManager, container_mac, host_ifname, peer_ifname
from tests.helpers import require_root


def _links(*names: str) -> dict[str, dict]:
    with IPRoute() as ip:
        return {l.get("ifname"): l for l in ip.get_links() if l.get("ifname") in names}


async def _create_concurrently(ids: list[str]) -> dict[str, tuple[int, str]]:
    links = LinkManager()
    try:
        made = await asyncio.gather(*(links.create_endpoint_link(i, 1500, container_mac(i)) for i in ids))
        return {i: (m.host_ifindex, m.peer_ifname) for i, m in zip(ids, made)}
    finally:
        await links.close()


async def _delete(ids: list[str]) -> None:
    links = LinkManager()
    try:
        for i in ids:
            await links.delete_endpoint_link(i)
    finally:
        await links.close()


def test_concurrent_creates_with_shared_id_prefix_keep_their_own_veths() -> None:
    require_root()
    prefix = uuid.uuid4().hex[:12]  # 12 shared characters, more than any short name keeps
    ids = [prefix + uuid.uuid4().hex + uuid.uuid4().hex[:20] for _ in range(4)]
    try:
        made = asyncio.run(_create_concurrently(ids))
        names = [n for i in ids for n in (host_ifname(i), peer_ifname(i))]
        present = _links(*names)
        for i in ids:
            host, peer = present.get(host_ifname(i)), present.get(peer_ifname(i))
            assert host is not None and peer is not None, f"veth pair of {i[:16]} is gone"
            assert host["index"] == made[i][0]
            # Each container side is the other end of its own host side.
            assert peer.get_attr("IFLA_LINK") == host["index"]
            assert len(peer_ifname(i)) <= 15
        assert len(set(names)) == len(names)
        asyncio.run(_delete(ids[:1]))
        left = _links(*names)
        assert host_ifname(ids[0]) not in left and peer_ifname(ids[0]) not in left
        assert all(host_ifname(i) in left and peer_ifname(i) in left for i in ids[1:])
    finally:
        asyncio.run(_delete(ids))
    assert _links(*[n for i in ids for n in (host_ifname(i), peer_ifname(i))]) == {}
