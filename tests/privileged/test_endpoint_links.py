"""Endpoint veths on the real kernel: concurrent creates never share a name.

Docker endpoint IDs that share their first characters used to get one
container-side name (``tmp`` + 5 characters); the second create then deleted
the first one's pair as a "leftover". Each test removes every link it made.
"""

from __future__ import annotations

import asyncio
import subprocess
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


async def _retire(i: str) -> tuple[bool, dict | None, bool]:
    """Retire ``i``'s veth; returns what retire said, the host side right
    after (its flags) and whether retiring an absent veth said False."""
    links = LinkManager()
    try:
        said = await links.retire_endpoint_link(i)
        right_after = (await asyncio.to_thread(_links, host_ifname(i))).get(host_ifname(i))
        absent = await links.retire_endpoint_link(i + "-absent")
    finally:
        await links.close()  # waits for the background delete
    return said, right_after, absent


def test_a_retired_veth_passes_nothing_at_once_and_is_gone_by_close() -> None:
    """DeleteEndpoint's veth: down (no packet crosses it) when retire returns,
    deleted in the background, both sides, by the time the manager closes."""
    require_root()
    i = uuid.uuid4().hex + uuid.uuid4().hex
    try:
        made = asyncio.run(_create_concurrently([i]))
        assert _links(host_ifname(i))[host_ifname(i)]["flags"] & 1, "a new endpoint veth is up"
        said, right_after, absent = asyncio.run(_retire(i))
        assert said is True and absent is False
        assert right_after is None or (right_after["index"] == made[i][0] and not right_after["flags"] & 1)
        assert _links(host_ifname(i), peer_ifname(i)) == {}
    finally:
        asyncio.run(_delete([i]))


async def _plumb(i: str) -> int:
    links = LinkManager()
    try:
        made = await links.create_endpoint_link(i, 1400, container_mac(i))
        for _ in range(2):  # idempotent: a restore plumbs a live endpoint again
            await links.add_endpoint_routes(made.host_ifindex, "10.254.7.9", "fd00:254::7:9", None, None,
                                            ["fd00:254::1"])
        return made.host_ifindex
    finally:
        await links.close()


def test_endpoint_veth_routes_and_proxy_ndp_as_the_kernel_shows_them() -> None:
    require_root()
    i = uuid.uuid4().hex + uuid.uuid4().hex
    try:
        idx = asyncio.run(_plumb(i))
        link = _links(host_ifname(i), peer_ifname(i))
        assert link[host_ifname(i)]["index"] == idx and link[host_ifname(i)].get_attr("IFLA_MTU") == 1400
        assert link[peer_ifname(i)].get_attr("IFLA_ADDRESS") == container_mac(i)
        with IPRoute() as ip:
            r4 = ip.get_routes(family=2, dst="10.254.7.9/32")
            r6 = ip.get_routes(family=10, dst="fd00:254::7:9/128")
        assert [r.get_attr("RTA_OIF") for r in r4] == [idx]
        assert "scope link" in subprocess.run(["ip", "-4", "route", "show", "10.254.7.9/32"], capture_output=True,
                                              text=True, check=True).stdout
        assert [r.get_attr("RTA_OIF") for r in r6] == [idx]
        proxies = subprocess.run(["ip", "-6", "neigh", "show", "proxy", "dev", host_ifname(i)], capture_output=True,
                                 text=True, check=True).stdout.split()
        assert proxies == ["fd00:254::1", "proxy"]
    finally:
        asyncio.run(_delete([i]))
    assert subprocess.run(["ip", "-4", "route", "show", "10.254.7.9/32"], capture_output=True, text=True,
                          check=True).stdout == ""
