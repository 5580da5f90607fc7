"""What the REST API needs from the agent, and the typed AppKey that carries it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web

if TYPE_CHECKING:  # the daemon builds the API app: no import of its parts at run time
    from docker_cilium.agent.config import DaemonConfig
    from docker_cilium.agent.options import RuntimeOptions
    from docker_cilium.datapath.maps.registry import DatapathMaps
    from docker_cilium.endpoint.manager import EndpointManager
    from docker_cilium.identity.cache import IdentityCache
    from docker_cilium.ipam.allocator import IPAM
    from docker_cilium.monitor.hub import MonitorHub
    from docker_cilium.policy.manager import PolicyManager
    from docker_cilium.prefilter import PreFilter
    from docker_cilium.service.manager import ServiceManager


class APIDaemon(Protocol):
    """The agent as the handlers see it: ``agent.daemon.Daemon`` in the agent,
    ``tests/unit/unit_daemon.UnitDaemon`` (the same objects minus the kernel)
    in unit tests. Read-only: the handlers call into these, never replace them."""

    @property
    def config(self) -> DaemonConfig: ...

    @property
    def mtu(self) -> int: ...

    @property
    def ipam(self) -> IPAM: ...

    @property
    def policy(self) -> PolicyManager: ...

    @property
    def identities(self) -> IdentityCache: ...

    @property
    def endpoints(self) -> EndpointManager: ...

    @property
    def services(self) -> ServiceManager: ...

    @property
    def monitor(self) -> MonitorHub: ...

    @property
    def prefilter(self) -> PreFilter | None:
        """The XDP prefilter's deny list (None: no ``--prefilter-device``)."""
        ...

    def options(self) -> RuntimeOptions:
        """The runtime options (`cilium config`)."""
        ...

    def host_addressing(self) -> dict[str, Any]: ...

    def nodes(self) -> dict[str, Any]:
        """Cilium's ClusterNodeStatus (``/v1/cluster/nodes``)."""
        ...

    def datapath_maps(self) -> DatapathMaps | None:
        """The pinned maps the agent holds (None without a datapath)."""
        ...

    def monitor_status(self) -> dict[str, Any]:
        """Cilium's MonitorStatus (cpus, npages, pagesize, lost) and who listens."""
        ...

    async def status(self) -> dict[str, Any]:
        """Cilium's StatusResponse (``/v1/healthz``)."""
        ...


# The agent whose endpoints, IPAM and policy the handlers serve.
DAEMON: web.AppKey[APIDaemon] = web.AppKey("daemon")
