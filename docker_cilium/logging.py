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

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "warn": logging.WARNING,
           "error": logging.ERROR, "exception": logging.ERROR, "critical": logging.CRITICAL}
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


def _filter_level(logger: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
    # A processor rather than a filtering wrapper class: cached loggers keep
    # their wrapper, so only a processor sees a level changed at run time.
    if _LEVELS.get(method, logging.INFO) < _State.level:
        raise structlog.DropEvent
    return event


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
            _filter_level,
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _remember,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    # Libraries (pyroute2 dumps every netlink message at DEBUG) stay at WARNING.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
