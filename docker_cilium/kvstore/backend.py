"""The one interface every key-value store backend implements.

Cilium keeps cluster state (identities, ipcache, nodes) in etcd and uses the
same calls against an in-process store in tests; we do the same so that the
agent code never knows which backend it talks to, and so one test suite can
be run against every backend.

Keys are ``str`` (slash-separated, Cilium's ``cilium/state/...`` layout);
values are ``bytes`` (callers choose the encoding, usually JSON).
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import enum
from dataclasses import dataclass
from typing import AsyncIterator, Callable

from docker_cilium.errors import Unavailable


class EventType(enum.Enum):
    PUT = "put"
    DELETE = "delete"


@dataclass(frozen=True)
class Event:
    """A change seen by ``watch``; ``value`` is None for deletions."""

    type: EventType
    key: str
    value: bytes | None


class KVStoreError(Unavailable):
    """A backend failed (server unreachable, lease expired, ...): 503 to API callers."""


class Backend(abc.ABC):
    """Async key-value store with leases, compare-and-swap and watches.

    Every key written with ``lease=True`` is bound to this client's session
    lease: it disappears when the client stops renewing the lease (agent
    death), which is how per-node identity references get garbage-collected.
    """

    name: str = "abstract"
    _session_listeners: list[Callable[[], None]]
    _keepalive_task: asyncio.Task[None] | None = None

    def add_session_listener(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (on the event loop) each time the session lease is replaced.

        A replaced lease means every ``lease=True`` key this client wrote is
        gone (expired while the store was unreachable, or revoked): owners of
        such keys must write them again before other nodes act on their
        absence (identity GC).
        """
        if "_session_listeners" not in self.__dict__:
            self._session_listeners = []
        self._session_listeners.append(callback)

    def _session_lost(self) -> None:
        for cb in self.__dict__.get("_session_listeners", []):
            cb()

    async def _stop_keepalive(self) -> None:
        """Cancel the session lease keep-alive and wait for it (first step of close())."""
        task, self._keepalive_task = self._keepalive_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    @abc.abstractmethod
    async def connect(self) -> None:
        """Open the connection and start the session lease keep-alive."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop keep-alives and release resources (does not revoke the lease)."""

    @abc.abstractmethod
    async def get(self, key: str) -> bytes | None: ...

    @abc.abstractmethod
    async def get_prefix(self, prefix: str) -> dict[str, bytes]:
        """All keys starting with ``prefix`` (plain string prefix)."""

    @abc.abstractmethod
    async def put(self, key: str, value: bytes, *, lease: bool = False) -> None: ...

    @abc.abstractmethod
    async def delete(self, key: str) -> bool:
        """Delete ``key``; True if it existed."""

    @abc.abstractmethod
    async def delete_prefix(self, prefix: str) -> int:
        """Delete every key under ``prefix``; returns how many."""

    @abc.abstractmethod
    async def create_only(self, key: str, value: bytes, *, lease: bool = False) -> bool:
        """Write ``key`` only if absent; True if this call created it."""

    @abc.abstractmethod
    async def compare_and_swap(
        self, key: str, expected: bytes | None, value: bytes, *, lease: bool = False
    ) -> bool:
        """Replace ``key`` only if its current value is ``expected`` (None = absent)."""

    @abc.abstractmethod
    async def compare_and_delete(self, key: str, expected: bytes) -> bool:
        """Delete ``key`` only if its current value is ``expected``."""

    @abc.abstractmethod
    def watch(self, prefix: str) -> AsyncIterator[Event]:
        """Yield changes under ``prefix``, in store order, until the iterator is closed.

        The start point is fixed when ``watch()`` is *called* (not at the first
        ``__anext__``): it is the last store revision this client has observed.
        So the list-then-watch pattern (``get_prefix`` then ``watch``) misses
        nothing in between; the price is that changes made by other clients
        since this client's last call may be replayed, so consumers must be
        idempotent (they must be anyway, to recover from a re-list).

        Close it with ``await it.aclose()`` (or cancel the consuming task).
        Raises KVStoreError if the store dropped history the watcher still
        needed (etcd compaction, SQLite change-log trim): re-list and re-watch.
        """

    @abc.abstractmethod
    async def revoke_session(self) -> None:
        """Revoke the session lease now: every ``lease=True`` key goes away."""
