"""The node registry: every agent's Node record in the cluster store (Cilium's ``pkg/node/store``).

Each agent writes ``cilium/state/nodes/v1/<cluster>/<name>`` on its session
lease, so a node whose agent dies ages out of everyone's view when its lease
expires, and watches the prefix for the others. Observers (the datapath:
routes, tunnel entries) are told when a node joins, changes or leaves; the
local node is reported like any other, and observers that only care about
remote nodes compare ``node.name`` with ``registry.local.name``.
"""

from __future__ import annotations

from typing import Protocol

import structlog

from docker_cilium.errors import Conflict
from docker_cilium.kvstore import keys
from docker_cilium.kvstore.backend import Backend
from docker_cilium.kvstore.store import SharedStore

from .types import Node, NodeDecodeError

log = structlog.get_logger(__name__)


class NodeNameTaken(Conflict):
    """Another live node holds this node's name (two hosts with one hostname)."""


async def check_name_free(backend: Backend, cluster: str, name: str, node_ip: str, *,
                          prefix: str = keys.NODES) -> None:
    """Refuse a name another node's live record holds with another address.

    The name keys both the registry record and the range claims: two hosts
    called the same would overwrite each other's record and share one
    allocation range (duplicate addresses). A record with our own address is
    this node's, left by a run whose lease has not expired yet.
    """
    raw = await backend.get(f"{prefix}{cluster}/{name}")
    if raw is None:
        return
    try:
        other = Node.from_json(raw).tunnel_endpoint
    except NodeDecodeError:
        return  # unreadable: ours to overwrite
    if other and other != node_ip:
        raise NodeNameTaken(f"node name {name!r} is in use by the node at {other} ({prefix}{cluster}/{name}): "
                            f"give this host its own name with --node-name (or wait for that node's lease "
                            f"to expire if it was this host under another address)")


class NodeObserver(Protocol):
    """Told about node changes, on the event loop, in store order."""

    def node_joined(self, node: Node) -> None: ...
    def node_updated(self, old: Node, new: Node) -> None: ...
    def node_left(self, node: Node) -> None: ...


class NodeRegistry:
    """This node's record in the store and the local view of every node's."""

    def __init__(self, backend: Backend, local: Node, *, prefix: str = keys.NODES,
                 retry_s: float | None = None) -> None:
        self.local = local
        self.prefix = f"{prefix}{local.cluster}/"
        self._nodes: dict[str, Node] = {}
        self._observers: list[NodeObserver] = []
        extra = {} if retry_s is None else {"retry_s": retry_s}
        self._store = SharedStore(backend, self.prefix, self, what="nodes", **extra)

    def subscribe(self, observer: NodeObserver) -> None:
        """Add ``observer``; it is told about the nodes already known as joins."""
        self._observers.append(observer)
        for node in list(self._nodes.values()):
            observer.node_joined(node)

    async def start(self) -> None:
        """Write our record and load everyone's (ours is in the view once written)."""
        self._store.set_local(self.local.name, self.local.to_json())
        await self._store.start()
        await self._store.flush()

    async def close(self) -> None:
        await self._store.close()

    def update_local(self, node: Node) -> None:
        """Publish a change of our own record (new addresses or ranges)."""
        self.local = node
        self._store.set_local(node.name, node.to_json())

    async def flush(self) -> None:
        await self._store.flush()

    def nodes(self) -> list[Node]:
        """Every node in the view, by name."""
        return [self._nodes[n] for n in sorted(self._nodes)]

    def get(self, name: str) -> Node | None:
        return self._nodes.get(name)

    # ---- StoreObserver ---------------------------------------------------------------

    def on_update(self, name: str, value: bytes) -> None:
        try:
            node = Node.from_json(value)
        except NodeDecodeError as e:
            log.warning("node.bad_record", key=self.prefix + name, error=str(e))
            self.on_delete(name)
            return
        if node.name != name:
            log.warning("node.bad_record", key=self.prefix + name, error=f"names node {node.name!r}")
            self.on_delete(name)
            return
        old = self._nodes.get(name)
        if old == node:
            return
        self._nodes[name] = node
        if old is None:
            log.info("node.joined", node=name, ip=node.tunnel_endpoint, ipv4_range=str(node.ipv4_alloc_cidr))
            self._tell("node_joined", node)
        else:
            log.info("node.updated", node=name, ip=node.tunnel_endpoint, ipv4_range=str(node.ipv4_alloc_cidr))
            self._tell("node_updated", old, node)

    def on_delete(self, name: str) -> None:
        node = self._nodes.pop(name, None)
        if node is None:
            return
        log.info("node.left", node=name, ip=node.tunnel_endpoint)
        self._tell("node_left", node)

    def _tell(self, method: str, *args: Node) -> None:
        """Call ``method`` on every observer; one failing does not keep the others uninformed."""
        for obs in self._observers:
            try:
                getattr(obs, method)(*args)
            except Exception:
                log.exception("node.observer_failed", observer=type(obs).__name__, event=method)
