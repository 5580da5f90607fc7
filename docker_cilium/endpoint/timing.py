"""How long endpoint regenerations take, reported to an observer (the agent's
metrics: ``cilium_endpoint_regeneration_time_stats_seconds``)."""

from __future__ import annotations

import functools
import time
from typing import Any, Awaitable, Callable, Protocol

from docker_cilium.endpoint.model import Endpoint, State


class RegenerationObserver(Protocol):
    def endpoint_regenerated(self, seconds: float, ok: bool) -> None: ...


def timed_regeneration(fn: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
    """Wrap a method ``fn(self, ep, ...)`` that regenerates one endpoint: its
    duration and outcome go to ``self.observer`` (if any). An endpoint going
    away is not regenerated, so it is not reported."""

    @functools.wraps(fn)
    async def wrapper(self: Any, ep: Endpoint, *args: Any) -> None:
        t0, ok = time.perf_counter(), False
        try:
            await fn(self, ep, *args)
            ok = True
        finally:
            gone = ep.state in (State.DISCONNECTING, State.DISCONNECTED)
            if self.observer is not None and not (ok and gone):
                self.observer.endpoint_regenerated(time.perf_counter() - t0, ok)
    return wrapper
