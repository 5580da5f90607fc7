"""Test-wide set-up: the agent's structlog output goes to the real stderr at
WARNING, so in-process CLI runs (click's CliRunner) see only the CLI's output."""

from __future__ import annotations

import logging
import sys

import structlog

structlog.configure(
    processors=[structlog.processors.add_log_level, structlog.dev.ConsoleRenderer(colors=False)],
    wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
    logger_factory=structlog.PrintLoggerFactory(file=sys.__stderr__),
    cache_logger_on_first_use=False,
)
