"""Long policy work on the event loop without starving it.

Parsing and resolving a 10,000-rule policy takes seconds of pure Python.
Threads would not help much (the GIL hands the loop back only every few
milliseconds per switch, and a request needs several), so the work runs on
the loop in steps and gives the loop a turn whenever a few milliseconds of it
have run. A request needs a few loop iterations, so a plugin call waits a
few budgets at most (measured: bench/policy_scale.py).
The data it works on is a snapshot, so the turns cannot change its result.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from typing import Generator, Iterator, TypeVar

T = TypeVar("T")

#: Work between two turns of the loop (seconds).
BUDGET = 0.002


class Turns:
    """Call ``await turns()`` between steps; it yields to the loop once the
    budget is spent since the last turn, and costs one clock read otherwise."""

    def __init__(self, budget: float = BUDGET) -> None:
        self.budget = budget
        self._since = time.perf_counter()

    async def __call__(self) -> None:
        if time.perf_counter() - self._since >= self.budget:
            await asyncio.sleep(0)
            self._since = time.perf_counter()

    async def drive(self, steps: Generator[None, None, T]) -> T:
        """Run a generator that yields between its steps; return its value."""
        while True:
            try:
                next(steps)
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]
            await self()


@contextlib.contextmanager
def quiet_gc() -> Iterator[None]:
    """Keep the cyclic garbage collector from pausing the loop while a large
    policy document is parsed (only then: the switch is process-wide): it
    stays off meanwhile (reference counting still frees nearly everything;
    rules hold no cycles) and is on again afterwards.
    Nothing is frozen: a frozen object is never collected, so cycles made
    meanwhile (request frames, a failed import's traceback) would leak.
    Measured with 10,000 rules: full collections of 10-80 ms each, several
    per import, otherwise."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
