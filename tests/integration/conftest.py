"""Fixtures that run the integration suites against REAL stores.

``etcd_server`` starts an actual etcd (the Debian package's /usr/bin/etcd);
it fails rather than skips when etcd is missing, because a skipped etcd
suite would let a broken etcd backend look green.

``backend`` / ``backend_factory`` are parametrized over both backend kinds
so that every test written once runs against SQLite and etcd.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from typing import AsyncIterator, Awaitable, Callable, Iterator

import pytest

from docker_cilium.kvstore import Backend
from docker_cilium.kvstore.etcd import EtcdBackend
from docker_cilium.kvstore.sqlite import SQLiteBackend

from tests.integration.etcd_proc import start_cluster


STUCK_S = 100.0  # below the 120 s pytest-timeout of the etcd suites


@pytest.fixture(autouse=True)
async def dump_tasks_when_stuck() -> AsyncIterator[None]:
    """Print every asyncio task's stack when a test is still running after
    STUCK_S: pytest-timeout's thread dump shows only an idle loop, not which
    await never returned (an etcd suite hung that way, rarely)."""
    loop = asyncio.get_running_loop()

    def dump() -> None:
        print(f"\n--- asyncio tasks after {STUCK_S:.0f} s ---", file=sys.stderr)
        for task in asyncio.all_tasks(loop):
            task.print_stack(file=sys.stderr)

    timer = threading.Timer(STUCK_S, loop.call_soon_threadsafe, (dump,))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


@pytest.fixture(scope="session")
def etcd_server() -> Iterator[str]:
    """A throw-away single-member etcd; yields ``"127.0.0.1:PORT"``."""
    cluster = start_cluster(1)
    try:
        yield cluster.members[0].address
    finally:
        cluster.stop()


BACKEND_KINDS = [
    pytest.param("local", id="local"),
    pytest.param("etcd", id="etcd", marks=pytest.mark.etcd),
]

BackendFactory = Callable[..., Awaitable[Backend]]


@pytest.fixture(params=BACKEND_KINDS)
def backend_kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
async def backend_factory(
    backend_kind: str, request: pytest.FixtureRequest, tmp_path
) -> AsyncIterator[BackendFactory]:
    """``await make(lease_ttl=...)`` -> another connected client of ONE store.

    Every client made in a test talks to the same store (same SQLite file /
    same etcd), which is what multi-agent tests need.  For etcd the whole
    keyspace is wiped before the test: the server is shared by the session
    and the identity allocator uses fixed ``cilium/...`` keys, so per-test
    key prefixes cannot isolate tests (they run sequentially).
    """
    made: list[Backend] = []
    etcd_addr = request.getfixturevalue("etcd_server") if backend_kind == "etcd" else None
    db_path = str(tmp_path / "kvstore.db")

    async def make(lease_ttl: float = 15) -> Backend:
        if backend_kind == "etcd":
            b: Backend = EtcdBackend([etcd_addr], lease_ttl=int(lease_ttl))  # type: ignore[list-item]
        else:
            b = SQLiteBackend(db_path, lease_ttl=lease_ttl)
        await b.connect()
        made.append(b)
        return b

    if backend_kind == "etcd":
        wiper = await make()
        await wiper.delete_prefix("")
    try:
        yield make
    finally:
        for b in made:
            try:
                await b.close()
            except Exception:
                pass


@pytest.fixture
async def backend(backend_factory: BackendFactory) -> Backend:
    """One connected client; closed by ``backend_factory``'s teardown."""
    return await backend_factory()
