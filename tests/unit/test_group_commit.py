"""The embedded store's group commit: writes queued while one transaction
commits share the next, each is answered only once committed, and one that
fails is undone alone."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest

from docker_cilium.kvstore.backend import KVStoreError
from docker_cilium.kvstore.sqlite import SQLiteBackend


@pytest.fixture
async def store(tmp_path):
    b = SQLiteBackend(str(tmp_path / "kv" / "node-state.db"))
    await b.connect()
    yield b
    await b.close()


def _commits(store: SQLiteBackend, seen: list[int]) -> None:
    """Record how many writes each transaction of ``store`` carries."""
    run = store._run

    async def counting(fn, *args):
        if getattr(fn, "__name__", "") == "_write_batch":
            seen.append(len(args[0]))
        return await run(fn, *args)

    store._run = counting  # type: ignore[method-assign]


async def test_concurrent_writes_share_commits_and_are_all_durable(store, tmp_path):
    seen: list[int] = []
    _commits(store, seen)
    writes = [store.put(f"k/{i}", b"v%d" % i) for i in range(20)]
    writes += [store.create_only(f"c/{i}", b"x") for i in range(10)]
    results = await asyncio.gather(*writes)
    assert results[20:] == [True] * 10
    assert sum(seen) == 30 and len(seen) <= 2, f"30 concurrent writes took {len(seen)} commits: {seen}"
    # Committed when answered: another connection (another process's view) reads them all.
    other = SQLiteBackend(str(tmp_path / "kv" / "node-state.db"))
    await other.connect()
    try:
        assert len(await other.get_prefix("k/")) == 20 and len(await other.get_prefix("c/")) == 10
    finally:
        await other.close()


async def test_a_failing_write_is_undone_alone(store):
    def half_then_fail(conn: sqlite3.Connection) -> None:
        store._set_locked(conn, "bad/1", b"x", False)
        raise sqlite3.IntegrityError("refused")

    ok_before = store.put("good/1", b"1")
    bad = store._group.submit(half_then_fail)
    ok_after = store.put("good/2", b"2")
    results = await asyncio.gather(ok_before, bad, ok_after, return_exceptions=True)
    assert results[0] is None and results[2] is None
    assert isinstance(results[1], KVStoreError) and "refused" in str(results[1])
    assert await store.get("bad/1") is None
    assert set(await store.get_prefix("good/")) == {"good/1", "good/2"}


async def test_a_caller_that_gives_up_does_not_take_its_write_out(store):
    task = asyncio.ensure_future(store.put("kept", b"1"))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await store.put("after", b"2")  # queued behind it: its transaction has committed by now
    assert await store.get("kept") == b"1"
