"""The agent's part in a cluster store: claimed ranges, its registry record, the shared ipcache,
the datapath's node handler on the registry and cluster health.

Only with a cluster store (``--kvstore etcd``); the embedded store keeps the
single-node behaviour (ranges derived from the node IP, `cilium node list`
showing this node).
"""

from __future__ import annotations

from typing import Any, Protocol

import structlog

from docker_cilium.ipam.ranges import NodeAddressing
from docker_cilium.ipcache import IPCache
from docker_cilium.ipcache.kvstore import SharedIPCache
from docker_cilium.kvstore import keys
from docker_cilium.kvstore.backend import Backend

from .claims import RangeClaims
from .health import HEALTH_PORT, HealthProber, HealthResponder
from .registry import NodeObserver, NodeRegistry, check_name_free
from .types import Node

log = structlog.get_logger(__name__)


class DatapathObserver(NodeObserver, Protocol):
    """The datapath's node handler (``datapath.nodehandler.NodeHandler``)."""

    async def start(self) -> None: ...
    async def close(self) -> None: ...


class ClusterNode:
    """Ranges claimed before the node's devices exist; registry and ipcache once the ipcache is up."""

    def __init__(self, backend: Backend, node_name: str, enable_ipv6: bool, cluster: str = keys.CLUSTER) -> None:
        self.backend = backend
        self.node_name = node_name
        self.enable_ipv6 = enable_ipv6
        self.cluster = cluster
        self.registry: NodeRegistry | None = None
        self.ipcache: SharedIPCache | None = None
        self._local_ipcache: IPCache | None = None
        self.handler: DatapathObserver | None = None
        self.responder: HealthResponder | None = None
        self.prober: HealthProber | None = None

    async def claim(self, node_ip: str, ipv4_range: str | None, ipv6_range: str | None) -> NodeAddressing:
        """This node's ranges, claimed through the store (see claims.py), under a name no other node uses."""
        await check_name_free(self.backend, self.cluster, self.node_name, node_ip)
        return await RangeClaims(self.backend, self.node_name).claim(node_ip, ipv4_range, ipv6_range)

    async def start(self, addressing: NodeAddressing, ipcache: IPCache) -> None:
        """Join the registry and the shared ipcache (local endpoints are published as they come)."""
        self.registry = NodeRegistry(self.backend, Node.local(self.node_name, self.cluster, addressing,
                                                              self.enable_ipv6))
        await self.registry.start()
        self._local_ipcache = ipcache
        self.ipcache = SharedIPCache(self.backend, ipcache, self.node_name, addressing.node_ip, cluster=self.cluster)
        await self.ipcache.start()

    async def start_datapath(self, handler: DatapathObserver, health_port: int = HEALTH_PORT) -> None:
        """Routes and tunnel entries for the other nodes (``handler``, told about the nodes
        known now before its first pass sweeps the rest), then cluster health."""
        assert self.registry is not None
        self.registry.subscribe(handler)
        self.handler = handler
        if self._local_ipcache is not None:  # both listings are in: what no node publishes is stale
            if swept := await self._local_ipcache.sweep_remote():
                log.info("ipcache.stale_remote_swept", prefixes=swept)
        await handler.start()
        self.responder = HealthResponder(self.node_name, health_port)
        await self.responder.start()
        self.prober = HealthProber(self.registry.nodes, port=health_port)
        await self.prober.start()

    async def close(self) -> None:
        """Stop watching; our keys stay until the session lease expires (a restart re-writes them).
        Routes and tunnel entries stay too: forwarding goes on while the agent is down."""
        for part in (self.prober, self.responder, self.ipcache, self.registry, self.handler):
            if part is not None:
                await part.close()

    def health(self) -> dict[str, Any]:
        """``cluster-health`` of /v1/healthz."""
        if self.prober is None:
            return {"state": "Warning", "msg": "not started", "reachable": 0, "total": 0, "nodes": []}
        st = self.prober.status()
        if self.responder is not None and self.responder.error:
            st["msg"] += f"; {self.responder.error}"
            st["state"] = "Warning" if st["state"] == "Ok" else st["state"]
        return st

    def nodes(self) -> dict[str, Any]:
        """Cilium's ClusterNodeStatus from the registry: every node in the view."""
        nodes = self.registry.nodes() if self.registry is not None else []
        return {"self": self.node_name, "nodes-added": [n.element() for n in nodes]}
