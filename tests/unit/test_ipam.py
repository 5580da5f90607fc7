"""IPAM: ranges as Cilium derived them, and no double allocation across restarts."""

from __future__ import annotations

import ipaddress
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from docker_cilium.errors import AllocationFailed, Conflict
from docker_cilium.ipam.allocator import IPAM
from docker_cilium.ipam.ranges import NodeAddressing, ipv4_range_for, ipv6_range_for
from docker_cilium.kvstore.sqlite import SQLiteBackend

ROOT = Path(__file__).resolve().parents[2]


def test_node_ranges_match_cilium():
    v4 = ipv4_range_for("192.168.33.15")
    assert str(v4) == "10.15.0.0/16"
    assert str(ipv6_range_for(v4)) == "f00d::a0f:0:0:0/96"
    node = NodeAddressing.derive("192.0.2.77")
    assert str(node.router4) == "10.77.0.1" and str(node.router6) == "f00d::a4d:0:0:1"
    assert str(NodeAddressing.derive("1.2.3.4", "10.200.0.0/16").ipv6_range) == "f00d::ac8:0:0:0/96"


# A separate process that holds the store and allocates without pause,
# printing each address once allocate() has returned it.
ALLOCATOR = """
import asyncio, sys
from docker_cilium import logging
from docker_cilium.ipam.allocator import IPAM
from docker_cilium.ipam.ranges import NodeAddressing
from docker_cilium.kvstore.sqlite import SQLiteBackend

async def main(path):
    store = SQLiteBackend(path)
    await store.connect()
    ipam = IPAM(store, NodeAddressing.derive("192.0.2.9"))
    pools = [ipam.request_pool(False), ipam.request_pool(True)]
    n = 0
    while True:
        ip = await ipam.allocate(pools[n % 2], f"ep{n}")
        print(ip, flush=True)
        n += 1

logging.setup()  # logs to stderr: stdout carries only the addresses
asyncio.run(main(sys.argv[1]))
"""


async def test_allocations_survive_restart_and_crash(tmp_path):
    """kill -9 a process in the middle of allocating: every address it handed
    out is still held after restore, and none is handed out a second time."""
    path = str(tmp_path / "node.db")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen([sys.executable, "-c", ALLOCATOR, path], stdout=subprocess.PIPE, text=True, env=env)
    try:
        first = [child.stdout.readline().strip() for _ in range(40)]
    finally:
        child.kill()  # SIGKILL while it is still allocating: no close(), no cleanup
        child.wait(10)
    handed_out = first + child.stdout.read().split()  # everything printed before it died
    child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    assert all(first) and len(set(handed_out)) == len(handed_out) >= 40
    assert {ipaddress.ip_address(a).version for a in handed_out} == {4, 6}

    node = NodeAddressing.derive("192.0.2.9")
    store = SQLiteBackend(path)
    await store.connect()
    ipam = IPAM(store, node)
    held = await ipam.restore()
    # Everything handed out survived; at most the one in flight at the kill is extra.
    survived = set(ipam.allocations())
    assert set(handed_out) <= survived and held - len(handed_out) <= 1
    pools = [ipam.request_pool(False), ipam.request_pool(True)]
    more = [str(await ipam.allocate(pools[i % 2], "t")) for i in range(10)]
    assert len(set(more)) == 10 and not set(more) & survived
    with pytest.raises(Conflict, match="already allocated"):
        await ipam.allocate(pools[0], "t", handed_out[0])
    await store.close()

    # A clean restart keeps the same set.
    store = SQLiteBackend(path)
    await store.connect()
    again = IPAM(store, node)
    assert await again.restore() == held + 10
    assert again.allocations() == ipam.allocations()
    await store.close()


async def test_exhaustion_is_a_clear_error(tmp_path):
    store = SQLiteBackend(str(tmp_path / "n.db"))
    await store.connect()
    ipam = IPAM(store, NodeAddressing.derive("192.0.2.9"))
    pool = ipam.request_pool(False, "10.9.4.0/30")
    assert str(await ipam.allocate(pool, "t")) == "10.9.4.0"
    for _ in range(3):
        await ipam.allocate(pool, "t")
    with pytest.raises(AllocationFailed, match="no free address left in 10.9.4.0/30"):
        await ipam.allocate(pool, "t")
    await store.close()
