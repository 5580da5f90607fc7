"""Typed application keys (aiohttp's AppKey) shared by the API handlers."""

from __future__ import annotations

from typing import Any

from aiohttp import web

DAEMON: web.AppKey[Any] = web.AppKey("daemon", object)
