"""Typed application keys (aiohttp's AppKey) shared by the API handlers."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:  # the daemon builds the API app: no import at run time
    from docker_cilium.agent.daemon import Daemon

# The agent whose endpoints, IPAM and policy the handlers serve.
DAEMON: web.AppKey[Daemon] = web.AppKey("daemon")
