"""What `cilium debuginfo` reports: everything an issue report needs, in one reply.

Each section is collected on its own: one that fails (the KV store down makes
the status slow to answer, a tool is missing) says why in its place, and the
rest of the report is still there; a report is most needed when something
is broken. Kernel calls and tool runs happen in worker threads, off the loop.
"""

from __future__ import annotations

import asyncio
import platform
import subprocess
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from docker_cilium import defaults
from docker_cilium import logging as dclog
from docker_cilium.datapath.maps.pinned import list_maps
from docker_cilium.version import version_info

if TYPE_CHECKING:
    from docker_cilium.api.keys import APIDaemon

#: Tools whose versions matter to the datapath: (name, argv).
TOOLS = (("clang", ["clang", "--version"]), ("iproute2", ["ip", "-V"]), ("tc", ["tc", "-V"]),
         ("iptables", ["iptables", "--version"]), ("docker", ["docker", "version", "--format",
                                                               "{{.Server.Version}}"]))
LOG_LINES = 100


def _first_line(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unavailable: {exc}"
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text else f"unavailable: exit status {out.returncode}"


def tool_versions() -> dict[str, str]:
    return {name: _first_line(argv) for name, argv in TOOLS}


async def _section(fn: Callable[[], Awaitable[Any]]) -> Any:
    try:
        return await fn()
    except Exception as exc:
        return {"error": str(exc) or type(exc).__name__}


async def collect(daemon: APIDaemon, config: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Cilium's DebugInfo shape plus this agent's parts (``config`` is the /v1/config model)."""

    async def identities() -> list[dict[str, Any]]:
        return [{"id": i.id, "labels": i.labels.to_strings()}
                for i in sorted(daemon.identities.identities(), key=lambda i: i.id)]

    async def policy() -> dict[str, Any]:
        return {"revision": daemon.policy.revision, "policy": await daemon.policy.rules_json(daemon.policy.repo.get(None))}

    async def endpoints() -> list[dict[str, Any]]:
        return [ep.to_model() for ep in daemon.endpoints.list()]

    async def static(value: Any) -> Any:
        return value

    async def maps() -> list[dict[str, Any]]:
        """As `cilium map list -o json` shows them."""
        pinned = await asyncio.to_thread(list_maps, defaults.bpf_pin_root(daemon.config.bpf_root))
        return [m.to_dict() for m in pinned]

    return {
        "cilium-version": version_info(),
        "kernel-version": f"{platform.system()} {platform.release()} {platform.version()}",
        "tool-versions": await asyncio.to_thread(tool_versions),
        "cilium-status": await _section(daemon.status),
        "cilium-config": await _section(lambda: static(config())),
        "endpoint-list": await _section(endpoints),
        "identities": await _section(identities),
        "policy": await _section(policy),
        "maps": await _section(maps),
        "agent-log": dclog.recent_lines(LOG_LINES),
    }
