"""structlog set-up shared by the agent and the CLI.

JSON lines when stderr is not a terminal (journald, CI logs, log shippers
want one parseable record per line), a coloured console renderer otherwise.
"""

from __future__ import annotations

import logging
import sys

import structlog


def setup(debug: bool = False, fmt: str = "auto", quiet: bool = False) -> None:
    """Configure structlog and the stdlib root logger once per process.

    ``quiet`` (the CLI) keeps warnings and errors only: a verb's stdout is
    its output (``-o json`` must parse), and info lines from the store or
    datapath classes it uses would only be noise there.
    """
    level = logging.WARNING if quiet else logging.DEBUG if debug else logging.INFO
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
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    # Libraries (pyroute2 dumps every netlink message at DEBUG) stay at WARNING.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
