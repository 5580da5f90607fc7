"""structlog set-up shared by the agent and the CLI.

JSON lines when stderr is not a terminal (journald, CI logs, log shippers
want one parseable record per line), a coloured console renderer otherwise.
"""

from __future__ import annotations

import collections
import json
import logging
import sys
from typing import Any

import structlog

#: Records kept for `cilium debuginfo`: the last ones logged at the current level.
RECENT_MAX = 200


class _State:
    level = logging.INFO
    recent: collections.deque[dict[str, Any]] = collections.deque(maxlen=RECENT_MAX)


def set_debug(enabled: bool) -> None:
    """The runtime option ``Debug``: takes effect on the next record, no restart."""
    _State.level = logging.DEBUG if enabled else logging.INFO


def debug_enabled() -> bool:
    return _State.level <= logging.DEBUG


class _BoundLogger(structlog.make_filtering_bound_logger(logging.DEBUG)):  # type: ignore[misc]
    """Cached loggers keep their wrapper class, so the level a runtime change
    sets is read on each call; the only level that changes is debug's (Debug
    option), and a disabled debug call returns before building any record."""

    def debug(self, event: str | None = None, *args: Any, **kw: Any) -> Any:
        if _State.level > logging.DEBUG:
            return None
        return super().debug(event, *args, **kw)

    async def adebug(self, event: str | None = None, *args: Any, **kw: Any) -> Any:
        if _State.level > logging.DEBUG:
            return None
        return await super().adebug(event, *args, **kw)


def _remember(logger: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
    _State.recent.append(dict(event))
    return event


def recent_lines(limit: int = RECENT_MAX) -> list[str]:
    """The last ``limit`` records the agent logged, one JSON object each (oldest first)."""
    records = list(_State.recent)[-limit:] if limit > 0 else []
    return [json.dumps(r, default=str, sort_keys=True) for r in records]


def setup(debug: bool = False, fmt: str = "auto") -> None:
    """Configure structlog and the stdlib root logger once per process."""
    set_debug(debug)
    if fmt == "auto":
        fmt = "text" if sys.stderr.isatty() else "json"
    renderer: structlog.typing.Processor
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _remember,
            renderer,
        ],
        wrapper_class=_BoundLogger,
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    # Libraries (pyroute2 dumps every netlink message at DEBUG) stay at WARNING.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
