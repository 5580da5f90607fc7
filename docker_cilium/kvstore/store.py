"""Keys every node writes for itself and watches for all (Cilium's ``pkg/kvstore/store``).

The node registry and the shared ipcache follow one pattern: each agent owns
some keys under a common prefix, writes them on its session lease (so they
age out when the agent dies) and keeps a local view of every agent's keys
under that prefix, fed by a watch and a list. ``SharedStore`` is that pattern
once, so both get the same answers to the hard cases:

* a replaced session lease (it expired while the store was unreachable)
  took our keys with it: they are written again;
* a watch that breaks (etcd compaction, a restarted server) is followed by
  a fresh list, and the view is diffed against it so a deletion missed in
  between still reaches the observer;
* local writes are queued and coalesced (a burst of 100 endpoints is one
  pass), and a failed write stays queued and is retried.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Protocol

import structlog

from .backend import Backend, EventType, KVStoreError

log = structlog.get_logger(__name__)

#: Wait between attempts after a failed watch or write.
RETRY_S = 1.0


class StoreObserver(Protocol):
    """Told about changes to the shared view (every node's keys, ours included)."""

    def on_update(self, name: str, value: bytes) -> None: ...
    def on_delete(self, name: str) -> None: ...


class SharedStore:
    """The keys under ``prefix``: ours on the session lease, everyone's in ``view``.

    ``name`` is a key without the prefix. Observer callbacks run on the event
    loop, once per actual change (a replayed event with an unchanged value is
    not reported again).
    """

    def __init__(self, backend: Backend, prefix: str, observer: StoreObserver, *, what: str = "store",
                 retry_s: float = RETRY_S) -> None:
        self.backend = backend
        self.prefix = prefix
        self.observer = observer
        self.what = what
        self.retry_s = retry_s
        self.view: dict[str, bytes] = {}
        self._local: dict[str, bytes | None] = {}  # what we want: None = delete
        self._written: dict[str, bytes] = {}  # what we last wrote (for compare-and-delete)
        self._dirty: set[str] = set()
        self._flush_task: asyncio.Task[None] | None = None
        self._watch_task: asyncio.Task[None] | None = None
        self._closed = False
        backend.add_session_listener(self._on_session_lost)

    # ---- the shared view -----------------------------------------------------------

    async def start(self) -> None:
        """Watch, then list every key (nothing in between is missed)."""
        it = await self._list_and_watch()
        self._watch_task = asyncio.create_task(self._watch(it), name=f"kvstore-watch-{self.what}")

    async def _list_and_watch(self):  # type: ignore[no-untyped-def]
        # The watch's start is fixed now, at the last revision this client has
        # seen; the list comes after it, so it covers everything up to that
        # start even when another task's write on this client moved the
        # revision on meanwhile (list-then-watch would lose changes in
        # between). Events the list already holds may be replayed: applying
        # them again ends in the same state.
        it = self.backend.watch(self.prefix)
        listed = await self.backend.get_prefix(self.prefix)
        fresh = {k[len(self.prefix):]: v for k, v in listed.items()}
        for name in [n for n in self.view if n not in fresh]:
            self._apply_delete(name)
        for name, value in fresh.items():
            self._apply_put(name, value)
        return it

    async def _watch(self, it) -> None:  # type: ignore[no-untyped-def]
        while not self._closed:
            try:
                async for ev in it:
                    name = ev.key[len(self.prefix):]
                    if ev.type is EventType.PUT and ev.value is not None:
                        self._apply_put(name, ev.value)
                    else:
                        self._apply_delete(name)
                if self._closed:
                    return
                log.warning("kvstore.watch_ended", what=self.what, prefix=self.prefix)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # a broken watch: re-list and watch again
                log.warning("kvstore.watch_failed", what=self.what, prefix=self.prefix, error=str(e))
            with contextlib.suppress(Exception):
                await it.aclose()
            await asyncio.sleep(self.retry_s)
            while not self._closed:
                try:
                    it = await self._list_and_watch()
                    break
                except KVStoreError as e:
                    log.warning("kvstore.relist_failed", what=self.what, prefix=self.prefix, error=str(e))
                    await asyncio.sleep(self.retry_s)

    def _apply_put(self, name: str, value: bytes) -> None:
        if self.view.get(name) == value:
            return
        self.view[name] = value
        self._notify(self.observer.on_update, name, value)

    def _apply_delete(self, name: str) -> None:
        if self.view.pop(name, None) is None:
            return
        self._notify(self.observer.on_delete, name)
        if name in self._written and self._local.get(name) is not None:
            # Our key vanished while we still want it (lease revoked, deleted
            # by hand): write it again.
            self._written.pop(name, None)
            self._mark(name)

    def _notify(self, fn, *args) -> None:  # type: ignore[no-untyped-def]
        try:
            fn(*args)
        except Exception:  # one bad record must not stop the watch
            log.exception("kvstore.observer_failed", what=self.what, key=args[0])

    # ---- our own keys --------------------------------------------------------------

    def set_local(self, name: str, value: bytes | None) -> None:
        """Own ``name`` with ``value`` (None: no longer), written in the background."""
        if self._local.get(name) == value and name not in self._dirty:
            return
        self._local[name] = value
        self._mark(name)

    def local(self) -> dict[str, bytes]:
        """The keys this node wants to own."""
        return {n: v for n, v in self._local.items() if v is not None}

    def _mark(self, name: str) -> None:
        self._dirty.add(name)
        if not self._closed and (self._flush_task is None or self._flush_task.done()):
            self._flush_task = asyncio.create_task(self._flush_loop(), name=f"kvstore-flush-{self.what}")

    async def flush(self) -> None:
        """Wait until every queued write is in the store (tests, shutdown)."""
        while not self._closed:
            task = self._flush_task
            if task is not None and not task.done():  # also the write in flight
                await asyncio.shield(task)
            elif self._dirty:
                self._mark(next(iter(self._dirty)))
            else:
                return

    async def _flush_loop(self) -> None:
        while self._dirty and not self._closed:
            name = self._dirty.pop()
            try:
                await self._write(name)
            except Exception as e:  # the store is down: keep it queued, try again
                self._dirty.add(name)
                log.warning("kvstore.local_write_failed", what=self.what, key=name, error=str(e))
                await asyncio.sleep(self.retry_s)

    async def _write(self, name: str) -> None:
        value = self._local.get(name)
        key = self.prefix + name
        if value is not None:
            await self.backend.put(key, value, lease=True)
            self._written[name] = value
            return
        old = self._written.pop(name, None)
        self._local.pop(name, None)
        if old is not None:
            await self.backend.compare_and_delete(key, old)

    def _on_session_lost(self) -> None:
        """The lease is new: every key we wrote on the old one is gone; write them again."""
        self._written.clear()
        for name in self.local():
            self._mark(name)

    async def close(self) -> None:
        """Stop watching and writing. Our keys stay until the lease expires."""
        self._closed = True
        for task in (self._watch_task, self._flush_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
