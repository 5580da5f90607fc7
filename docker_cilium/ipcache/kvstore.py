"""The shared ipcache: endpoint IP -> identity and host, through the cluster store.

Cilium's ``pkg/ipcache/kvstore.go``: every agent writes
``cilium/state/ip/v1/<cluster>/<IP>`` (Cilium's IPIdentityPair JSON: ``IP``,
``HostIP``, ``ID``, ...) for each local endpoint address, on its session
lease, and watches the prefix. Other nodes' entries go into the local
ipcache with the owning node's IP as tunnel endpoint, so a packet from a
remote endpoint gets its identity and a packet to one knows where to be
encapsulated. A node that dies takes its entries with its lease.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass

import structlog

from docker_cilium.identity import reserved
from docker_cilium.kvstore import keys
from docker_cilium.kvstore.backend import Backend
from docker_cilium.kvstore.store import SharedStore

from .ipcache import IPCache

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class IPIdentityPair:
    """One shared ipcache record (Cilium's ``identity.IPIdentityPair``)."""

    ip: str
    host_ip: str
    identity: int
    metadata: str = ""  # the owning node's name

    def to_json(self) -> bytes:
        return json.dumps({"IP": self.ip, "Mask": None, "HostIP": self.host_ip, "ID": self.identity,
                           "Key": 0, "Metadata": self.metadata}, sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> "IPIdentityPair":
        doc = json.loads(raw)
        identity = int(doc["ID"])
        if not 0 < identity < reserved.LOCAL_SCOPE:  # node-local (CIDR) identities mean another prefix per node
            raise ValueError(f"identity {identity} is not a cluster-wide identity")
        return cls(ip=str(ipaddress.ip_address(doc["IP"])), host_ip=str(ipaddress.ip_address(doc["HostIP"])),
                   identity=identity, metadata=str(doc.get("Metadata") or ""))


class SharedIPCache:
    """Publishes this node's endpoint addresses and mirrors the other nodes' into ``ipcache``."""

    def __init__(self, backend: Backend, ipcache: IPCache, node_name: str, host_ip: str, *,
                 cluster: str = keys.CLUSTER, prefix: str = keys.IPCACHE, retry_s: float | None = None) -> None:
        self.ipcache = ipcache
        self.node_name = node_name
        self.host_ip = host_ip
        self.prefix = f"{prefix}{cluster}/"
        self._remote: set[str] = set()
        extra = {} if retry_s is None else {"retry_s": retry_s}
        self._store = SharedStore(backend, self.prefix, self, what="ipcache", **extra)

    async def start(self) -> None:
        """Publish the local endpoints known so far (and every later change), then watch."""
        self.ipcache.add_local_listener(self._local_changed)
        await self._store.start()

    async def close(self) -> None:
        await self._store.close()

    async def flush(self) -> None:
        """Wait until every local change is in the store."""
        await self._store.flush()

    def remote(self) -> set[str]:
        """The other nodes' endpoint addresses now in the ipcache."""
        return set(self._remote)

    def _local_changed(self, ip: str, identity: int | None) -> None:
        value = None if identity is None else IPIdentityPair(ip, self.host_ip, identity, self.node_name).to_json()
        self._store.set_local(ip, value)

    def _ours(self, pair: IPIdentityPair) -> bool:
        return pair.metadata == self.node_name or pair.host_ip == self.host_ip

    # ---- StoreObserver ---------------------------------------------------------------

    def on_update(self, name: str, value: bytes) -> None:
        try:
            pair = IPIdentityPair.from_json(value)
            if pair.ip != str(ipaddress.ip_address(name)):
                raise ValueError(f"record names IP {pair.ip}")
        except (ValueError, TypeError, KeyError) as e:
            log.warning("ipcache.bad_record", key=self.prefix + name, error=str(e))
            self.on_delete(name)
            return
        if self._ours(pair):
            self.on_delete(name)  # (was another node's: the address moved here)
            return
        # Another node's host is reserved:remote-node here, never reserved:host (the
        # datapath does the same with tunnel key 1): a record cannot lend an address
        # the local host's privileges.
        identity = reserved.REMOTE_NODE if pair.identity == reserved.HOST else pair.identity
        self._remote.add(pair.ip)
        self.ipcache.upsert_remote(pair.ip, identity, pair.host_ip)
        log.debug("ipcache.remote_upsert", ip=pair.ip, identity=identity, host=pair.host_ip)

    def on_delete(self, name: str) -> None:
        if name not in self._remote:
            return
        self._remote.discard(name)
        self.ipcache.delete_remote(name)
        log.debug("ipcache.remote_delete", ip=name)
