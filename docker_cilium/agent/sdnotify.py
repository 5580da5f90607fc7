"""systemd's readiness protocol (sd_notify), without libsystemd.

The unit in contrib/systemd is ``Type=notify`` and ordered
``Before=docker.service``: systemd starts dockerd only once the agent says
READY=1, which it does after state is restored and the plugin socket serves.
So dockerd's restart of ``--restart always`` containers at boot finds the
driver instead of failing with "plugin not found". Outside systemd
(``NOTIFY_SOCKET`` unset) every call is a no-op.
"""

from __future__ import annotations

import os
import socket

import structlog

log = structlog.get_logger(__name__)

ENV = "NOTIFY_SOCKET"


def notify(state: str) -> bool:
    """Send ``state`` (e.g. ``READY=1``) to systemd; False when not run by it.

    A failure to send is logged, never raised: the agent serves either way,
    and systemd reports the missing readiness itself (start timeout).
    """
    path = os.environ.get(ENV)
    if not path:
        return False
    if path.startswith("@"):  # abstract namespace
        path = "\0" + path[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(state.encode(), path)
    except OSError as exc:
        log.warning("sdnotify.failed", state=state, error=str(exc))
        return False
    return True
