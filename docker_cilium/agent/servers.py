"""Listeners apart from the application lifecycle: one UnixSite per socket.

The plugin socket must be root-only (0600: dockerd runs as root) and the API
socket root plus group (0660), as Cilium's; the directory is created on the
fly because /run is a tmpfs that starts empty after a reboot.
"""

from __future__ import annotations

import os
import socket

import structlog
from aiohttp import web

log = structlog.get_logger(__name__)


def ensure_socket_free(path: str) -> None:
    """Refuse a socket another process still serves; a dead one may be replaced."""
    if not os.path.exists(path):
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except OSError:
        return  # stale socket from a crashed agent
    finally:
        probe.close()
    raise RuntimeError(f"{path} is served by another process (another cilium-agent?): stop it first")


class UnixServer:
    def __init__(self, app: web.Application, path: str, mode: int, name: str) -> None:
        self.app, self.path, self.mode, self.name = app, path, mode, name
        self.runner = web.AppRunner(app, access_log=None, handle_signals=False)

    async def start(self) -> None:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        ensure_socket_free(self.path)
        if os.path.exists(self.path):
            os.unlink(self.path)  # stale socket from a crashed agent
        await self.runner.setup()
        site = web.UnixSite(self.runner, self.path)
        old = os.umask(0o177)
        try:
            await site.start()
        finally:
            os.umask(old)
        os.chmod(self.path, self.mode)
        log.info("server.listening", name=self.name, socket=self.path)

    async def stop(self) -> None:
        await self.runner.cleanup()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
