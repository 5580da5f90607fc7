"""Group commit: writes that arrive while one transaction commits share the next.

A commit costs one fsync whatever it holds, and the embedded store's writes
run one after another on its worker thread. So each write waits in a queue;
the first one starts a transaction at once (a lone write waits for nothing),
and every write queued while that transaction commits goes into the next
one. Each write still returns only once the transaction holding it has
committed (durable before the caller sees it), and each gets its own result:
a write that fails is rolled back alone (a savepoint), the others commit.
"""

from __future__ import annotations

import asyncio
import sqlite3
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable


@dataclass
class Write:
    """One queued write: ``fn(conn, *args)`` inside the batch's transaction."""

    fn: Callable[..., Any]
    args: tuple[Any, ...]
    future: asyncio.Future[Any] = field(repr=False)


@dataclass
class Outcome:
    ok: bool
    value: Any  # the result, or the exception to raise


class GroupCommit:
    """Batches writes for ``commit``: it runs a list of writes in one
    transaction (on the store's worker) and returns one Outcome per write, or
    raises when the transaction itself failed (then every write in it failed)."""

    def __init__(self, commit: Callable[[list[Write]], Awaitable[list[Outcome]]]) -> None:
        self._commit = commit
        self._queue: list[Write] = []
        self._flusher: asyncio.Task[None] | None = None

    async def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        write = Write(fn, args, loop.create_future())
        write.future.add_done_callback(_retrieve)  # a caller that gave up leaves no "never retrieved"
        self._queue.append(write)
        if self._flusher is None or self._flusher.done():
            self._flusher = loop.create_task(self._flush(), name="kvstore-group-commit")
        # Shielded: a caller that gives up does not take its write out of a
        # transaction already under way (nor the others' with it).
        return await asyncio.shield(write.future)

    async def _flush(self) -> None:
        while self._queue:
            batch, self._queue = self._queue, []
            try:
                outcomes = await self._commit(batch)
            except BaseException as exc:
                for w in batch:
                    if not w.future.done():
                        w.future.set_exception(exc)
                if isinstance(exc, asyncio.CancelledError):
                    for w in self._queue:
                        w.future.set_exception(exc)
                    self._queue = []
                    raise
                continue
            for w, out in zip(batch, outcomes):
                if w.future.done():
                    continue
                if out.ok:
                    w.future.set_result(out.value)
                else:
                    w.future.set_exception(out.value)

    async def close(self) -> None:
        """Let the writes already queued finish."""
        if self._flusher is not None and not self._flusher.done():
            await asyncio.wait([self._flusher])


def run_each(conn: sqlite3.Connection, batch: list[Write],
             store_error: Callable[[sqlite3.Error], Exception]) -> list[Outcome]:
    """Each write of ``batch`` in a savepoint of the open transaction, so one
    that fails is undone alone (its SQLite error as ``store_error`` makes it)."""
    if len(batch) == 1:
        return [Outcome(True, batch[0].fn(conn, *batch[0].args))]
    out = []
    for w in batch:
        conn.execute("SAVEPOINT write")
        try:
            out.append(Outcome(True, w.fn(conn, *w.args)))
        except Exception as e:
            conn.execute("ROLLBACK TO write")
            out.append(Outcome(False, store_error(e) if isinstance(e, sqlite3.Error) else e))
        conn.execute("RELEASE write")
    return out


def _retrieve(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()
