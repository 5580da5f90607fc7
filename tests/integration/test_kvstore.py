"""One behavioural suite for every kvstore backend (SQLite file, real etcd).

The agent code is written against ``Backend`` only, so both backends must
agree on every semantic the agent relies on: atomic create/CAS, lease-bound
keys, ordered watches, visibility between clients, durability.
"""

from __future__ import annotations

import asyncio
import sys
import uuid

import pytest

from docker_cilium.kvstore import Backend, Event, EventType, KVStoreError, new_backend
from docker_cilium.kvstore.etcd import EtcdBackend
from docker_cilium.kvstore.sqlite import SQLiteBackend


@pytest.fixture
def ns() -> str:
    """A key namespace of this test's own."""
    return f"test/{uuid.uuid4().hex[:8]}/"


async def next_events(it, n: int, timeout: float = 5.0) -> list[Event]:
    out = []
    for _ in range(n):
        out.append(await asyncio.wait_for(it.__anext__(), timeout))
    return out


async def wait_absent(b: Backend, key: str, timeout: float) -> float:
    loop = asyncio.get_running_loop()
    start = loop.time()
    while loop.time() - start < timeout:
        if await b.get(key) is None:
            return loop.time() - start
        await asyncio.sleep(0.1)
    raise AssertionError(f"{key} still present after {timeout}s")


async def test_get_put_delete(backend: Backend, ns: str) -> None:
    k = ns + "a"
    assert await backend.get(k) is None
    await backend.put(k, b"1")
    assert await backend.get(k) == b"1"
    await backend.put(k, b"\x00\xffbinary")
    assert await backend.get(k) == b"\x00\xffbinary"
    assert await backend.delete(k) is True
    assert await backend.get(k) is None
    assert await backend.delete(k) is False


async def test_prefix_listing_and_delete_prefix(backend: Backend, ns: str) -> None:
    for k in ("x/1", "x/2", "x/sub/3", "xy/4", "y/5"):
        await backend.put(ns + k, k.encode())
    assert await backend.get_prefix(ns + "x/") == {
        ns + "x/1": b"x/1", ns + "x/2": b"x/2", ns + "x/sub/3": b"x/sub/3"
    }
    # Plain string prefix: "x" also matches "xy/..."
    assert set(await backend.get_prefix(ns + "x")) == {ns + k for k in ("x/1", "x/2", "x/sub/3", "xy/4")}
    assert await backend.get_prefix(ns + "nothing/") == {}
    assert await backend.delete_prefix(ns + "x/") == 3
    assert set(await backend.get_prefix(ns)) == {ns + "xy/4", ns + "y/5"}
    assert await backend.delete_prefix(ns + "x/") == 0


async def test_create_only_one_winner(backend_factory, ns: str) -> None:
    clients = [await backend_factory() for _ in range(3)]
    k = ns + "leader"
    results = await asyncio.gather(
        *(clients[i % 3].create_only(k, f"c{i}".encode()) for i in range(12))
    )
    assert results.count(True) == 1
    winner = results.index(True)
    assert await clients[0].get(k) == f"c{winner}".encode()
    assert await clients[1].create_only(k, b"late") is False


async def test_compare_and_swap(backend: Backend, ns: str) -> None:
    k = ns + "cas"
    assert await backend.compare_and_swap(k, b"nope", b"v1") is False  # absent != b"nope"
    assert await backend.get(k) is None
    assert await backend.compare_and_swap(k, None, b"v1") is True  # None = must be absent
    assert await backend.compare_and_swap(k, None, b"v2") is False
    assert await backend.compare_and_swap(k, b"wrong", b"v2") is False
    assert await backend.compare_and_swap(k, b"v1", b"v2") is True
    assert await backend.get(k) == b"v2"
    # An empty value is a value, not absence.
    assert await backend.compare_and_swap(k, b"v2", b"") is True
    assert await backend.compare_and_swap(k, None, b"x") is False
    assert await backend.compare_and_swap(k, b"", b"v3") is True


async def test_concurrent_cas_increments_are_not_lost(backend_factory, ns: str) -> None:
    a, b = await backend_factory(), await backend_factory()
    k = ns + "counter"
    await a.put(k, b"0")

    async def incr(c: Backend, n: int) -> None:
        for _ in range(n):
            while True:
                cur = await c.get(k)
                if await c.compare_and_swap(k, cur, str(int(cur) + 1).encode()):
                    break

    await asyncio.gather(incr(a, 15), incr(b, 15))
    assert await a.get(k) == b"30"


async def test_compare_and_delete(backend: Backend, ns: str) -> None:
    k = ns + "cad"
    assert await backend.compare_and_delete(k, b"x") is False
    await backend.put(k, b"x")
    assert await backend.compare_and_delete(k, b"y") is False
    assert await backend.get(k) == b"x"
    assert await backend.compare_and_delete(k, b"x") is True
    assert await backend.get(k) is None


async def test_lease_keys_vanish_on_revoke(backend_factory, ns: str) -> None:
    a, b = await backend_factory(), await backend_factory()
    await a.put(ns + "leased", b"1", lease=True)
    assert await a.create_only(ns + "leased-create", b"1", lease=True)
    assert await a.compare_and_swap(ns + "leased-cas", None, b"1", lease=True)
    await a.put(ns + "plain", b"1")
    assert len(await b.get_prefix(ns)) == 4
    await a.revoke_session()
    assert await b.get_prefix(ns) == {ns + "plain": b"1"}
    # The client stays usable with a new session after a revoke.
    await a.put(ns + "leased2", b"2", lease=True)
    assert await b.get(ns + "leased2") == b"2"


async def test_lease_expires_when_keepalive_stops(backend_factory, ns: str) -> None:
    dying = await backend_factory(lease_ttl=2)
    observer = await backend_factory()
    await dying.put(ns + "ephemeral", b"1", lease=True)
    await dying.put(ns + "durable", b"1")
    # Survives past its TTL while the keep-alive runs...
    await asyncio.sleep(2.5)
    assert await observer.get(ns + "ephemeral") == b"1"
    # ...and disappears once the client stops renewing (agent death).
    await dying.close()
    await wait_absent(observer, ns + "ephemeral", timeout=8)
    assert await observer.get(ns + "durable") == b"1"


async def test_leased_write_after_session_expired_gets_new_session(backend_factory, ns: str) -> None:
    """A stalled agent (keep-alive missed past the TTL) loses its keys but can write again."""
    stalled = await backend_factory(lease_ttl=2)
    observer = await backend_factory()
    await stalled.put(ns + "old", b"1", lease=True)
    stalled._keepalive_task.cancel()  # type: ignore[attr-defined]  # simulate a stall
    await wait_absent(observer, ns + "old", timeout=8)
    await stalled.put(ns + "new", b"2", lease=True)
    assert await stalled.create_only(ns + "new2", b"3", lease=True)
    assert await observer.get_prefix(ns) == {ns + "new": b"2", ns + "new2": b"3"}


async def test_watch_sees_puts_and_deletes_in_order(backend: Backend, ns: str) -> None:
    w = backend.watch(ns + "w/")
    try:
        await backend.put(ns + "w/a", b"1")
        await backend.put(ns + "other", b"ignored")
        await backend.put(ns + "w/b", b"2")
        await backend.put(ns + "w/a", b"3")
        await backend.delete(ns + "w/a")
        await backend.delete_prefix(ns + "w/")
        evs = await next_events(w, 5)
        assert evs == [
            Event(EventType.PUT, ns + "w/a", b"1"),
            Event(EventType.PUT, ns + "w/b", b"2"),
            Event(EventType.PUT, ns + "w/a", b"3"),
            Event(EventType.DELETE, ns + "w/a", None),
            Event(EventType.DELETE, ns + "w/b", None),
        ]
    finally:
        await w.aclose()


async def test_watch_after_list_has_no_gap(backend_factory, ns: str) -> None:
    """list-then-watch (Cilium's pattern) must not miss changes in between."""
    reader, writer = await backend_factory(), await backend_factory()
    await writer.put(ns + "a", b"1")
    assert await reader.get_prefix(ns) == {ns + "a": b"1"}
    await writer.put(ns + "b", b"2")  # after the list, before the watch
    w = reader.watch(ns)
    try:
        await writer.put(ns + "c", b"3")
        assert [e.key for e in await next_events(w, 2)] == [ns + "b", ns + "c"]
    finally:
        await w.aclose()


async def test_watch_sees_lease_expiry_as_delete(backend_factory, ns: str) -> None:
    dying = await backend_factory(lease_ttl=2)
    watcher = await backend_factory()
    await watcher.get_prefix(ns)
    w = watcher.watch(ns)
    try:
        await dying.put(ns + "ref", b"1", lease=True)
        await dying.revoke_session()
        assert await next_events(w, 2) == [
            Event(EventType.PUT, ns + "ref", b"1"),
            Event(EventType.DELETE, ns + "ref", None),
        ]
    finally:
        await w.aclose()


async def test_two_clients_see_each_others_writes(backend_factory, ns: str) -> None:
    a, b = await backend_factory(), await backend_factory()
    await a.put(ns + "from-a", b"a")
    await b.put(ns + "from-b", b"b")
    assert await a.get(ns + "from-b") == b"b"
    assert await b.get_prefix(ns) == {ns + "from-a": b"a", ns + "from-b": b"b"}
    w = b.watch(ns)
    try:
        await a.put(ns + "from-a", b"a2")
        assert await next_events(w, 1) == [Event(EventType.PUT, ns + "from-a", b"a2")]
    finally:
        await w.aclose()


async def test_sqlite_durable_across_reopen(tmp_path) -> None:
    path = str(tmp_path / "kv.db")
    b = SQLiteBackend(path)
    await b.connect()
    await b.put("ipam/10.0.0.5", b"owner")
    assert await b.create_only("ipam/10.0.0.6", b"owner2")
    await b.close()  # no revoke; like an agent restart
    b2 = SQLiteBackend(path)
    await b2.connect()
    try:
        assert await b2.get_prefix("ipam/") == {"ipam/10.0.0.5": b"owner", "ipam/10.0.0.6": b"owner2"}
        assert await b2.create_only("ipam/10.0.0.6", b"other") is False
    finally:
        await b2.close()


_CREATOR = """
import asyncio, sys
from docker_cilium.kvstore.sqlite import SQLiteBackend

async def main(path, me):
    b = SQLiteBackend(path)
    await b.connect()
    won = [i for i in range(25) if await b.create_only(f"slot/{i}", me.encode())]
    await b.close()
    print("WON:" + ",".join(map(str, won)))

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


async def test_sqlite_create_only_atomic_across_processes(tmp_path) -> None:
    """Several OS processes (agents, CLI) race on one file: one winner per key."""
    path = str(tmp_path / "shared.db")
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", _CREATOR, path, f"p{i}", stdout=asyncio.subprocess.PIPE
        )
        for i in range(4)
    ]
    # structlog logs to stdout too: keep only our marker line.
    outs = [
        next(ln[4:] for ln in (await p.communicate())[0].decode().splitlines() if ln.startswith("WON:"))
        for p in procs
    ]
    assert all(p.returncode == 0 for p in procs)
    wins = [int(x) for out in outs for x in out.split(",") if x]
    assert sorted(wins) == list(range(25))
    b = SQLiteBackend(path)
    await b.connect()
    try:
        stored = await b.get_prefix("slot/")
    finally:
        await b.close()
    assert len(stored) == 25
    for i, out in enumerate(outs):
        for x in filter(None, out.split(",")):
            assert stored[f"slot/{x}"] == f"p{i}".encode()


@pytest.mark.etcd
async def test_etcd_durable_across_reconnect(etcd_server: str, ns: str) -> None:
    b = EtcdBackend([etcd_server])
    await b.connect()
    await b.put(ns + "k", b"v")
    await b.close()
    b2 = EtcdBackend([f"http://{etcd_server}"])
    await b2.connect()
    try:
        assert await b2.get(ns + "k") == b"v"
    finally:
        await b2.delete_prefix(ns)
        await b2.close()


@pytest.mark.etcd
async def test_etcd_unreachable_error_names_address() -> None:
    b = EtcdBackend(["127.0.0.1:1"], lease_ttl=5)
    with pytest.raises(KVStoreError, match="127.0.0.1:1"):
        await asyncio.wait_for(b.connect(), 20)


def test_factory(tmp_path) -> None:
    local = new_backend("local", {}, str(tmp_path))
    assert isinstance(local, SQLiteBackend) and local.path == str(tmp_path / "kvstore.db")
    e = new_backend("etcd", {"etcd.address": "http://10.0.0.1:2379, 10.0.0.2:2379"}, str(tmp_path))
    assert isinstance(e, EtcdBackend) and e.endpoints == ["10.0.0.1:2379", "10.0.0.2:2379"]
    with pytest.raises(ValueError, match="etcd.address"):
        new_backend("etcd", {}, str(tmp_path))
    with pytest.raises(ValueError, match="consul"):
        new_backend("consul", {}, str(tmp_path))
