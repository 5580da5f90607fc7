"""KV store operations timed by action, kind, outcome and scope
(Cilium's ``cilium_kvstore_operations_duration_seconds``).

:class:`MeteredBackend` wraps whichever backend the agent chose, so neither
backend carries metrics code and every caller is counted the same way.
A failed operation is observed with ``outcome="fail"`` and re-raised.
"""

from __future__ import annotations

import time
from typing import Any, AsyncIterator, Awaitable, Callable, Protocol, TypeVar

from docker_cilium.kvstore.backend import Backend, Event

T = TypeVar("T")

# Cilium's operation kinds (pkg/kvstore: metricRead, metricSet, metricDelete).
READ, SET, DELETE, LEASE = "read", "set", "delete", "lease"


class KVStoreObserver(Protocol):
    def kvstore_operation(self, action: str, kind: str, scope: str, ok: bool, seconds: float) -> None: ...


def scope_of(key: str) -> str:
    """Cilium's GetScopeFromKey: ``cilium/state/identities/v1/id/7`` -> ``identities/v1``;
    a shorter key is its first 12 characters."""
    parts = key.split("/", 4)
    if len(parts) < 4:
        return key[:12]
    return f"{parts[2]}/{parts[3]}"


class MeteredBackend(Backend):
    """``inner``, with every operation's duration and outcome reported to ``observer``."""

    def __init__(self, inner: Backend, observer: KVStoreObserver) -> None:
        self.inner = inner
        self.observer = observer
        self.name = inner.name

    def __getattr__(self, attr: str) -> Any:  # backend-specific extras (e.g. lease_ttl)
        return getattr(self.inner, attr)

    async def _timed(self, action: str, kind: str, key: str, call: Callable[[], Awaitable[T]]) -> T:
        t0 = time.perf_counter()
        ok = False
        try:
            result = await call()
            ok = True
            return result
        finally:
            self.observer.kvstore_operation(action, kind, scope_of(key), ok, time.perf_counter() - t0)

    def add_session_listener(self, callback: Callable[[], None]) -> None:
        self.inner.add_session_listener(callback)

    async def connect(self) -> None:
        await self.inner.connect()

    async def close(self) -> None:
        await self.inner.close()

    async def get(self, key: str) -> bytes | None:
        return await self._timed("Get", READ, key, lambda: self.inner.get(key))

    async def get_prefix(self, prefix: str) -> dict[str, bytes]:
        return await self._timed("GetPrefix", READ, prefix, lambda: self.inner.get_prefix(prefix))

    async def put(self, key: str, value: bytes, *, lease: bool = False) -> None:
        await self._timed("Update", SET, key, lambda: self.inner.put(key, value, lease=lease))

    async def delete(self, key: str) -> bool:
        return await self._timed("Delete", DELETE, key, lambda: self.inner.delete(key))

    async def delete_prefix(self, prefix: str) -> int:
        return await self._timed("DeletePrefix", DELETE, prefix, lambda: self.inner.delete_prefix(prefix))

    async def create_only(self, key: str, value: bytes, *, lease: bool = False) -> bool:
        return await self._timed("CreateOnly", SET, key, lambda: self.inner.create_only(key, value, lease=lease))

    async def compare_and_swap(self, key: str, expected: bytes | None, value: bytes, *, lease: bool = False) -> bool:
        return await self._timed("CompareAndSwap", SET, key,
                                 lambda: self.inner.compare_and_swap(key, expected, value, lease=lease))

    async def compare_and_delete(self, key: str, expected: bytes) -> bool:
        return await self._timed("CompareAndDelete", DELETE, key,
                                 lambda: self.inner.compare_and_delete(key, expected))

    def watch(self, prefix: str) -> AsyncIterator[Event]:
        return self.inner.watch(prefix)

    async def revoke_session(self) -> None:
        await self._timed("RevokeSession", LEASE, "", self.inner.revoke_session)
