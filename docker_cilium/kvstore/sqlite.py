"""Embedded key-value store on one SQLite file: the default, serverless backend.

Why SQLite and not an in-memory dict: the agent persists IP allocations and
identities through the store and must never hand out an address twice across
a crash, and the CLI (another process) reads the same state.  So:

* WAL journal + ``synchronous=FULL``: a write has been fsync'ed before the
  call returns.
* Every read-modify-write runs in a ``BEGIN IMMEDIATE`` transaction, which
  takes SQLite's single writer lock up front, so ``create_only`` and
  ``compare_and_swap`` are atomic across *processes*, not just coroutines.
* Leases emulate etcd's: a ``leases`` row renewed by a keep-alive task; keys
  bound to an expired lease are purged (and reported as deletions to
  watchers) by whichever client notices first.
* Watches poll a ``changes`` log whose ``rev`` column is the store revision
  (like etcd's), so every client sees the same total order of changes.

All SQLite calls run on one dedicated worker thread per backend: that keeps
the event loop free while SQLite waits for its lock or fsyncs, and it
serializes use of the one connection without a lock that a cancelled
coroutine could leave inconsistent.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import sqlite3
import time
from typing import Any, AsyncIterator, Callable, TypeVar

import structlog

from .backend import Backend, Event, EventType, KVStoreError
from .files import secure_store_files
from .groupcommit import GroupCommit, Outcome, Write, run_each

log = structlog.get_logger(__name__)

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (
    key   TEXT PRIMARY KEY,
    value BLOB NOT NULL,
    lease INTEGER
);
CREATE INDEX IF NOT EXISTS kv_lease ON kv(lease);
CREATE TABLE IF NOT EXISTS leases (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    expires_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS changes (
    rev   INTEGER PRIMARY KEY AUTOINCREMENT,
    type  TEXT NOT NULL,
    key   TEXT NOT NULL,
    value BLOB,
    ts    REAL NOT NULL
);
"""

# How long the change log keeps entries.  A watcher that falls further behind
# than this gets a KVStoreError and must re-list, as with etcd compaction.
CHANGES_RETENTION_S = 300.0
# Always keep at least this many recent changes, whatever their age, so an
# idle store still lets a briefly paused watcher catch up.
CHANGES_MIN_KEEP = 1000
WATCH_POLL_S = 0.05
BUSY_TIMEOUT_MS = 10_000


def _prefix_end(prefix: str) -> str | None:
    """Exclusive upper bound of the keys starting with ``prefix``.

    SQLite compares TEXT with memcmp on UTF-8, which orders like code points,
    so bumping the last code point gives the end of the range and lets the
    primary-key index serve prefix scans.
    """
    if not prefix:
        return None
    last = ord(prefix[-1])
    if last >= 0x10FFFF or 0xD7FF <= last < 0xE000:
        return None  # cannot bump: the substr() check alone decides
    return prefix[:-1] + chr(last + 1)


def _range_sql(column: str, prefix: str) -> tuple[str, list[Any]]:
    """A WHERE fragment selecting ``column`` values that start with ``prefix``."""
    if not prefix:
        return "1", []
    end = _prefix_end(prefix)
    # substr() keeps the match exact even when no upper bound can be computed.
    sql = f"{column} >= ? AND substr({column}, 1, ?) = ?"
    args: list[Any] = [prefix, len(prefix), prefix]
    if end is not None:
        sql += f" AND {column} < ?"
        args.append(end)
    return sql, args


class SQLiteBackend(Backend):
    """Backend on a local SQLite file; safe to share between processes."""

    name = "local"

    def __init__(self, path: str, lease_ttl: float = 15.0) -> None:
        self.path = path
        self.lease_ttl = float(lease_ttl)
        self._conn: sqlite3.Connection | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._lease_id: int | None = None
        self._keepalive_task: asyncio.Task[None] | None = None
        # Highest revision this client has observed; watch() starts after it
        # so that "get_prefix, then watch" misses nothing in between.
        self._revision = 0
        self._last_trim = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._group = GroupCommit(lambda batch: self._run(self._write_batch, batch))

    # ------------------------------------------------------------------ infra

    def _open(self) -> None:
        secure_store_files(self.path)
        conn = sqlite3.connect(
            self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
        )
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        # Schema creation is a write: take the writer lock so two processes
        # starting together do not both try it half-way.
        conn.execute("BEGIN IMMEDIATE")
        try:
            for stmt in _SCHEMA.strip().split(";"):
                if stmt.strip():
                    conn.execute(stmt)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            conn.close()
            raise
        self._conn = conn

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._conn is None or self._executor is None:
            raise KVStoreError(f"sqlite kvstore {self.path}: not connected")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, fn, *args)
        except sqlite3.Error as e:
            raise KVStoreError(f"sqlite kvstore {self.path}: {e}") from e

    def _write(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn`` in a BEGIN IMMEDIATE transaction (worker thread only).

        Expired leases are purged first so that a key whose owner died is
        really absent for create_only/compare_and_swap, not just hidden.
        """
        conn = self._conn
        assert conn is not None
        conn.execute("BEGIN IMMEDIATE")
        try:
            self._purge_expired_locked(conn)
            self._ensure_lease_locked(conn)
            result = fn(conn, *args)
            self._note_revision_locked(conn)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return result

    def _write_batch(self, batch: list[Write]) -> list[Outcome]:
        """The group commit's writes in one BEGIN IMMEDIATE transaction
        (worker thread only): one fsync for all."""
        return self._write(run_each, batch, lambda e: KVStoreError(f"sqlite kvstore {self.path}: {e}"))

    def _read(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn`` in one read snapshot (worker thread only)."""
        conn = self._conn
        assert conn is not None
        conn.execute("BEGIN")
        try:
            result = fn(conn, *args)
            self._note_revision_locked(conn)
        finally:
            conn.execute("COMMIT")
        return result

    def _note_revision_locked(self, conn: sqlite3.Connection) -> None:
        row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name='changes'").fetchone()
        rev = row[0] if row else 0
        if rev > self._revision:
            self._revision = rev

    @staticmethod
    def _log_change(conn: sqlite3.Connection, typ: EventType, key: str, value: bytes | None) -> None:
        conn.execute(
            "INSERT INTO changes(type, key, value, ts) VALUES (?, ?, ?, ?)",
            (typ.value, key, value, time.time()),
        )

    def _purge_expired_locked(self, conn: sqlite3.Connection) -> None:
        now = time.time()
        expired = [r[0] for r in conn.execute("SELECT id FROM leases WHERE expires_at < ?", (now,))]
        for lease_id in expired:
            self._drop_lease_locked(conn, lease_id)
            log.debug("kvstore.lease_expired", path=self.path, lease=lease_id)

    def _ensure_lease_locked(self, conn: sqlite3.Connection) -> None:
        """Replace our lease if it expired (process stalled past the TTL).

        A key bound to a lease row that no longer exists would be hidden from
        reads yet never purged, so a leased write must never use a dead id.
        """
        if self._lease_id is None:
            return
        if conn.execute("SELECT 1 FROM leases WHERE id = ?", (self._lease_id,)).fetchone() is None:
            old = self._lease_id
            self._lease_id = self._grant_lease_locked(conn)
            log.error("kvstore.session_lost", path=self.path, old_lease=old, new_lease=self._lease_id)
            self._session_lost_threadsafe()

    def _drop_lease_locked(self, conn: sqlite3.Connection, lease_id: int) -> None:
        keys = [r[0] for r in conn.execute("SELECT key FROM kv WHERE lease = ? ORDER BY key", (lease_id,))]
        for key in keys:
            conn.execute("DELETE FROM kv WHERE key = ?", (key,))
            self._log_change(conn, EventType.DELETE, key, None)
        conn.execute("DELETE FROM leases WHERE id = ?", (lease_id,))

    def _live_lease_sql(self) -> str:
        # Reads hide keys of expired-but-not-yet-purged leases, so readers
        # never need the writer lock yet still agree with etcd's semantics.
        return "(lease IS NULL OR lease IN (SELECT id FROM leases WHERE expires_at >= ?))"

    # -------------------------------------------------------------- lifecycle

    async def connect(self) -> None:
        if self._conn is not None:
            return
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="kvstore-sqlite"
        )
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, self._open)
        except (sqlite3.Error, OSError) as e:
            self._executor.shutdown(wait=False)
            self._executor = None
            raise KVStoreError(f"sqlite kvstore {self.path}: cannot open: {e}") from e
        self._loop = loop
        self._lease_id = await self._run(self._write, self._grant_lease_locked)
        self._keepalive_task = asyncio.create_task(self._keepalive(), name="kvstore-sqlite-keepalive")
        log.info("kvstore.connected", backend="local", path=self.path, lease=self._lease_id)

    def _session_lost_threadsafe(self) -> None:
        """Notify session listeners on the loop (this runs on the worker thread)."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._session_lost)

    def _grant_lease_locked(self, conn: sqlite3.Connection) -> int:
        cur = conn.execute("INSERT INTO leases(expires_at) VALUES (?)", (time.time() + self.lease_ttl,))
        return int(cur.lastrowid)  # type: ignore[arg-type]

    async def close(self) -> None:
        await self._group.close()
        await self._stop_keepalive()
        if self._executor is not None and self._conn is not None:
            conn = self._conn
            loop = asyncio.get_running_loop()
            try:
                await loop.run_in_executor(self._executor, conn.close)
            except sqlite3.Error:
                pass
        self._conn = None
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None

    async def _keepalive(self) -> None:
        """Renew the session lease at a third of its TTL, like etcd clients do.

        Also purges other clients' expired leases and trims the change log,
        so a store with a dead agent converges even if nobody writes.
        """
        interval = max(self.lease_ttl / 3.0, 0.1)
        while True:
            await asyncio.sleep(interval)
            try:
                await self._run(self._write, self._renew_locked)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # keep renewing: a transient lock timeout must not kill the session
                log.warning("kvstore.keepalive_failed", path=self.path, error=str(e))

    def _renew_locked(self, conn: sqlite3.Connection) -> None:
        now = time.time()
        cur = conn.execute(
            "UPDATE leases SET expires_at = ? WHERE id = ?", (now + self.lease_ttl, self._lease_id)
        )
        if cur.rowcount == 0:
            # Our lease expired (process stalled longer than the TTL) or was
            # revoked elsewhere: its keys are gone, as they would be in etcd.
            old = self._lease_id
            self._lease_id = self._grant_lease_locked(conn)
            log.error("kvstore.session_lost", path=self.path, old_lease=old, new_lease=self._lease_id)
            self._session_lost_threadsafe()
        if now - self._last_trim > 5.0:
            self._last_trim = now
            self._trim_changes_locked(conn, now)

    @staticmethod
    def _trim_changes_locked(conn: sqlite3.Connection, now: float) -> None:
        conn.execute(
            "DELETE FROM changes WHERE ts < ? AND rev <= "
            "(SELECT COALESCE(MAX(rev), 0) FROM changes) - ?",
            (now - CHANGES_RETENTION_S, CHANGES_MIN_KEEP),
        )

    async def revoke_session(self) -> None:
        def revoke(conn: sqlite3.Connection) -> int:
            if self._lease_id is not None:
                self._drop_lease_locked(conn, self._lease_id)
            # Stay usable: later lease=True writes bind to a fresh session.
            self._lease_id = self._grant_lease_locked(conn)
            return self._lease_id

        new = await self._run(self._write, revoke)
        log.info("kvstore.session_revoked", path=self.path, new_lease=new)
        self._session_lost()

    # ---------------------------------------------------------------- reading

    async def get(self, key: str) -> bytes | None:
        def q(conn: sqlite3.Connection) -> bytes | None:
            row = conn.execute(
                f"SELECT value FROM kv WHERE key = ? AND {self._live_lease_sql()}", (key, time.time())
            ).fetchone()
            return bytes(row[0]) if row else None

        return await self._run(self._read, q)

    async def get_prefix(self, prefix: str) -> dict[str, bytes]:
        def q(conn: sqlite3.Connection) -> dict[str, bytes]:
            where, args = _range_sql("key", prefix)
            rows = conn.execute(
                f"SELECT key, value FROM kv WHERE {where} AND {self._live_lease_sql()} ORDER BY key",
                (*args, time.time()),
            )
            return {k: bytes(v) for k, v in rows}

        return await self._run(self._read, q)

    # ---------------------------------------------------------------- writing

    def _set_locked(self, conn: sqlite3.Connection, key: str, value: bytes, lease: bool) -> None:
        conn.execute(
            "INSERT INTO kv(key, value, lease) VALUES (?, ?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value, lease = excluded.lease",
            (key, value, self._lease_id if lease else None),
        )
        self._log_change(conn, EventType.PUT, key, value)

    def _current_locked(self, conn: sqlite3.Connection, key: str) -> bytes | None:
        # Expired leases were purged at the start of the transaction.
        row = conn.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        return bytes(row[0]) if row else None

    def _del_locked(self, conn: sqlite3.Connection, key: str) -> bool:
        cur = conn.execute("DELETE FROM kv WHERE key = ?", (key,))
        if cur.rowcount:
            self._log_change(conn, EventType.DELETE, key, None)
            return True
        return False

    async def put(self, key: str, value: bytes, *, lease: bool = False) -> None:
        value = bytes(value)
        await self._group.submit(self._set_locked, key, value, lease)

    async def delete(self, key: str) -> bool:
        return await self._group.submit(self._del_locked, key)

    async def delete_prefix(self, prefix: str) -> int:
        def op(conn: sqlite3.Connection) -> int:
            where, args = _range_sql("key", prefix)
            keys = [r[0] for r in conn.execute(f"SELECT key FROM kv WHERE {where} ORDER BY key", args)]
            for k in keys:
                self._del_locked(conn, k)
            return len(keys)

        return await self._group.submit(op)

    async def create_only(self, key: str, value: bytes, *, lease: bool = False) -> bool:
        value = bytes(value)

        def op(conn: sqlite3.Connection) -> bool:
            if self._current_locked(conn, key) is not None:
                return False
            self._set_locked(conn, key, value, lease)
            return True

        return await self._group.submit(op)

    async def compare_and_swap(
        self, key: str, expected: bytes | None, value: bytes, *, lease: bool = False
    ) -> bool:
        value = bytes(value)
        exp = None if expected is None else bytes(expected)

        def op(conn: sqlite3.Connection) -> bool:
            if self._current_locked(conn, key) != exp:
                return False
            self._set_locked(conn, key, value, lease)
            return True

        return await self._group.submit(op)

    async def compare_and_delete(self, key: str, expected: bytes) -> bool:
        exp = bytes(expected)

        def op(conn: sqlite3.Connection) -> bool:
            if self._current_locked(conn, key) != exp:
                return False
            return self._del_locked(conn, key)

        return await self._group.submit(op)

    # ------------------------------------------------------------------ watch

    def watch(self, prefix: str) -> AsyncIterator[Event]:
        # The start revision is captured now, synchronously, not when the
        # caller first iterates: changes made between this call and the first
        # __anext__ must not be lost.
        return self._watch(prefix, self._revision)

    async def _watch(self, prefix: str, after: int) -> AsyncIterator[Event]:
        where, args = _range_sql("key", prefix)

        def poll(
            conn: sqlite3.Connection, cursor: int
        ) -> tuple[list[tuple[int, str, str, Any]], bool, int]:
            oldest = conn.execute("SELECT MIN(rev) FROM changes").fetchone()[0]
            seq_row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name='changes'").fetchone()
            newest = seq_row[0] if seq_row else 0
            # Lost history: entries after our cursor were trimmed.
            lost = cursor < newest and (oldest is None or oldest > cursor + 1)
            rows = conn.execute(
                f"SELECT rev, type, key, value FROM changes WHERE rev > ? AND {where} "
                "ORDER BY rev LIMIT 1000",
                (cursor, *args),
            ).fetchall()
            return rows, lost, newest

        cursor = after
        while True:
            # Purge expired leases here as well: a watcher must eventually see
            # the deletion of a dead client's keys even if nobody else writes.
            rows, lost, newest = await self._run(self._write_or_read_poll, poll, cursor)
            if lost:
                raise KVStoreError(
                    f"sqlite kvstore {self.path}: watch on {prefix!r} fell behind the change log "
                    f"(revision {cursor} trimmed); re-list and watch again"
                )
            if not rows:
                # Nothing under our prefix up to `newest` (one snapshot), so
                # skip past other keys' changes instead of rescanning them.
                cursor = max(cursor, newest)
                await asyncio.sleep(WATCH_POLL_S)
                continue
            for rev, typ, key, value in rows:
                cursor = rev
                yield Event(EventType(typ), key, None if value is None else bytes(value))

    def _write_or_read_poll(self, fn: Callable[..., T], *args: Any) -> T:
        """Poll in a read snapshot; purge expired leases first only when needed.

        Taking the writer lock on every poll would serialize all watchers of
        all processes, so we only upgrade when an expired lease exists.
        """
        conn = self._conn
        assert conn is not None
        row = conn.execute("SELECT 1 FROM leases WHERE expires_at < ? LIMIT 1", (time.time(),)).fetchone()
        if row:
            return self._write(fn, *args)
        return self._read(fn, *args)
