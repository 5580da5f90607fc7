"""Crash points for the restart tests: the agent kills itself where a test asks.

``CILIUM_TEST_CRASH_AT=<point>`` in an agent's environment makes
:func:`point` send SIGKILL to that agent at that point: the tests then prove
that a restarted agent collects what a kill -9 at the worst moment leaves
behind. Unset (always, outside the
tests) a point costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

ENV = "CILIUM_TEST_CRASH_AT"


def point(name: str) -> None:
    """Die here, as ``kill -9`` would, when the test environment names this point."""
    if os.environ.get(ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
