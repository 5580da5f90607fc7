"""Version information `cilium version` prints for the client and the agent."""

from __future__ import annotations

import platform

from docker_cilium import __version__


def version_info() -> dict[str, str]:
    """Cilium's CiliumVersion fields, with the Python runtime for Go's."""
    return {"Version": __version__, "PythonRuntimeVersion": platform.python_version(),
            "Arch": f"{platform.system().lower()}/{platform.machine()}"}


def version_line(info: dict[str, str]) -> str:
    return f"{info.get('Version', '?')} python{info.get('PythonRuntimeVersion', '?')} {info.get('Arch', '?')}"
