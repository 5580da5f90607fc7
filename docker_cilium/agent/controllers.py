"""The agent's background loops as Cilium's controllers.

A controller runs one function every ``interval`` seconds and keeps what an
operator asks when something is off: when it last succeeded, when it last
failed and why, and how many times in a row it failed. `cilium status`
shows them ("Controller Status: 3/3 healthy", ``--all-controllers`` one row
each), in Cilium's model (``name``, ``configuration.interval``,
``status.{success,failure,consecutive-failure}-count``, timestamps, message).
A failure is logged and retried at the next interval: one broken step never
stops a loop, and none runs on the request path.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import structlog

from docker_cilium.timefmt import rfc3339

log = structlog.get_logger(__name__)


@dataclass
class ControllerStatus:
    name: str
    interval: float
    success_count: int = 0
    failure_count: int = 0
    consecutive_failure_count: int = 0
    last_success: float | None = None
    last_failure: float | None = None
    last_failure_msg: str = ""

    @property
    def healthy(self) -> bool:
        return self.consecutive_failure_count == 0

    def succeeded(self) -> None:
        self.success_count += 1
        self.consecutive_failure_count = 0
        self.last_success = time.time()

    def failed(self, error: BaseException) -> None:
        self.failure_count += 1
        self.consecutive_failure_count += 1
        self.last_failure = time.time()
        self.last_failure_msg = str(error) or type(error).__name__

    def to_model(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "configuration": {"interval": f"{self.interval:g}s"},
            "status": {
                "success-count": self.success_count,
                "failure-count": self.failure_count,
                "consecutive-failure-count": self.consecutive_failure_count,
                "last-success-timestamp": rfc3339(self.last_success),
                "last-failure-timestamp": rfc3339(self.last_failure),
                "last-failure-msg": self.last_failure_msg,
            },
        }


class Controllers:
    """Named periodic loops and their status; ``stop`` cancels them all."""

    def __init__(self) -> None:
        self._status: dict[str, ControllerStatus] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def start(self, name: str, interval: float, fn: Callable[[], Awaitable[Any]], *,
              first_run: float | None = None) -> ControllerStatus:
        """Run ``fn`` every ``interval`` s (the first time after ``first_run`` s, default ``interval``)."""
        if name in self._tasks:
            raise ValueError(f"controller {name} already runs")
        st = self._status[name] = ControllerStatus(name, interval)
        self._tasks[name] = asyncio.get_running_loop().create_task(
            self._loop(st, fn, interval if first_run is None else first_run), name=f"controller-{name}")
        return st

    async def _loop(self, st: ControllerStatus, fn: Callable[[], Awaitable[Any]], first: float) -> None:
        await asyncio.sleep(first)
        while True:
            await self.run_once(st, fn)
            await asyncio.sleep(st.interval)

    @staticmethod
    async def run_once(st: ControllerStatus, fn: Callable[[], Awaitable[Any]]) -> None:
        try:
            await fn()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if st.consecutive_failure_count == 0:
                log.warning("controller.failed", controller=st.name, error=str(exc) or type(exc).__name__)
            st.failed(exc)
        else:
            if st.consecutive_failure_count:
                log.info("controller.recovered", controller=st.name, failures=st.consecutive_failure_count)
            st.succeeded()

    def list(self) -> list[ControllerStatus]:
        return [self._status[k] for k in sorted(self._status)]

    def models(self) -> list[dict[str, Any]]:
        return [st.to_model() for st in self.list()]

    async def stop(self) -> None:
        tasks, self._tasks = list(self._tasks.values()), {}
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
