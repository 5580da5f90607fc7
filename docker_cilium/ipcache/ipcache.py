"""The ipcache: which identity every known address prefix has (Cilium's ``pkg/ipcache``).

The datapath looks up a packet's peer address in the LPM ``cilium_ipcache``
map to learn its identity. This module is the only writer of that map:

* ``0.0.0.0/0`` and ``::/0`` -> ``reserved:world``; the host's own addresses
  -> ``reserved:host`` (written at start);
* each endpoint address (``/32``, ``/128``) -> the endpoint's identity;
* each prefix a CIDR rule names -> a node-local CIDR identity, allocated here
  (from ``LOCAL_IDENTITY_BASE``) and persisted so numbers survive restarts;
* each remote endpoint address (another node's, from the shared ipcache in
  the cluster store, ``ipcache/kvstore.py``) -> its identity and the tunnel
  endpoint (the owning node's IP).

Local endpoint changes are also handed to listeners (the shared ipcache
publishes them for the other nodes).

Host and endpoint addresses keep their identity even when a CIDR rule names
exactly them: CIDR rules only describe non-endpoints.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
from dataclasses import dataclass
from typing import Callable, Iterable, Protocol

from docker_cilium.errors import InsufficientStorage
from docker_cilium.identity import reserved
from docker_cilium.kvstore import keys
from docker_cilium.kvstore.backend import Backend
from docker_cilium.policy.api.cidr import cidr_identity_labels

LOCAL_IDENTITY_BASE = reserved.LOCAL_SCOPE  # node-local identities (CIDR)
WORLD_PREFIXES = ("0.0.0.0/0", "::/0")


class IPCacheMap(Protocol):
    """The pinned ``cilium_ipcache`` map (``datapath.maps.IPCache``; a fake in unit tests)."""

    def upsert(self, prefix: str, identity: int, tunnel_endpoint: str | int = 0) -> None: ...
    def delete(self, prefix: str) -> bool: ...


@dataclass(frozen=True)
class CIDRPlan:
    """The CIDR identities a policy change needs: every prefix's number, and
    which prefixes it adds and drops (see :meth:`IPCache.plan_cidrs`)."""

    ids: dict[str, int]
    added: list[str]
    removed: list[str]


def host_prefix(ip: str) -> str:
    """``10.0.0.1`` -> ``10.0.0.1/32``, ``f00d::1`` -> ``f00d::1/128``."""
    addr = ipaddress.ip_address(ip)
    return f"{addr}/{32 if addr.version == 4 else 128}"


#: Told ``(ip, identity)`` when a local endpoint address gets an identity, ``(ip, None)`` when it goes.
LocalIPListener = Callable[[str, "int | None"], None]


class IPCache:
    """Prefix -> identity, for the datapath (the BPF map) and the identity cache
    (the CIDR identities). ``bpf_map`` is None when the agent runs without BPF."""

    def __init__(self, store: Backend, bpf_map: IPCacheMap | None) -> None:
        self.store = store
        self.map = bpf_map
        self._cidr_ids: dict[str, int] = {}
        self._free: set[int] = set()  # numbers of dropped prefixes, given out again first
        self._labels: dict[str, list[str]] = {}  # prefix -> its identity's labels
        self._host_ips: set[str] = set()
        self._endpoint_prefixes: dict[int, list[str]] = {}  # endpoint ID -> its /32 and /128
        self._endpoint_identity: dict[int, int] = {}
        self._remote: dict[str, tuple[int, str | None]] = {}  # prefix -> (identity, tunnel endpoint)
        self._listeners: list[LocalIPListener] = []

    async def start(self, host_ips: Iterable[str]) -> None:
        """Restore the CIDR identities and write the world and host entries."""
        raw = await self.store.get(keys.CIDR_IDENTITIES)
        if raw:
            self._cidr_ids = {k: int(v) for k, v in json.loads(raw).items()}
        self._host_ips = set(host_ips)
        if self.map is not None:
            for prefix in WORLD_PREFIXES:
                self.map.upsert(prefix, reserved.WORLD)
            for ip in self._host_ips:
                self.map.upsert(host_prefix(ip), reserved.HOST)

    def host_addresses(self) -> frozenset[str]:
        """The host's own addresses (``reserved:host``)."""
        return frozenset(self._host_ips)

    # ---- CIDR identities ---------------------------------------------------------

    def cidr_identities(self) -> dict[str, int]:
        """Prefix -> its node-local identity (a copy: a consistent snapshot)."""
        return dict(self._cidr_ids)

    def cidr_labels(self, prefix: str) -> list[str]:
        """Labels of a prefix's CIDR identity, computed once per prefix."""
        labels = self._labels.get(prefix)
        if labels is None:
            labels = self._labels[prefix] = sorted(cidr_identity_labels(prefix))
        return labels

    def local_identities(self) -> dict[int, list[str]]:
        """Node-local identity -> its labels (``cidr:...`` and ``reserved:world``)."""
        return {num: self.cidr_labels(prefix) for prefix, num in self._cidr_ids.items()}

    def local_identity(self, num: int) -> list[str] | None:
        """The labels of node-local identity ``num``, or None if it is not one."""
        prefix = next((p for p, n in self._cidr_ids.items() if n == num), None)
        return self.cidr_labels(prefix) if prefix is not None else None

    def plan_cidrs(self, wanted: set[str]) -> CIDRPlan:
        """The CIDR identities ``wanted`` needs, without changing anything:
        prefixes kept keep their number, new ones get free numbers (freed
        ones first, then above the highest in use: no scan per prefix)."""
        ids = {p: n for p, n in self._cidr_ids.items() if p in wanted}
        removed = [p for p in self._cidr_ids if p not in wanted]
        added = [p for p in wanted if p not in self._cidr_ids]
        if added:
            free = iter(sorted({self._cidr_ids[p] for p in removed} | self._free))
            nxt = max(self._cidr_ids.values(), default=LOCAL_IDENTITY_BASE) + 1
            for prefix in sorted(added):
                num = next(free, None)
                if num is None:
                    num, nxt = nxt, nxt + 1
                if num >= LOCAL_IDENTITY_BASE + (1 << 24):
                    raise InsufficientStorage(f"no free node-local identity for CIDR {prefix}")
                ids[prefix] = num
        return CIDRPlan(ids, added, removed)

    async def commit_cidrs(self, plan: CIDRPlan) -> None:
        """Make ``plan`` the CIDR identities: ipcache entries for new prefixes,
        stale ones out, numbers persisted. Called once the policy that names
        the new prefixes is in the endpoints' maps."""
        old = self._cidr_ids
        self._free = ({old[p] for p in plan.removed} | self._free) - set(plan.ids.values())
        self._cidr_ids = dict(plan.ids)
        for prefix in plan.removed:
            self._labels.pop(prefix, None)
        if self.map is not None:
            await asyncio.to_thread(self._write_cidrs, plan, self._protected_prefixes())
        if plan.added or plan.removed:
            await self.store.put(keys.CIDR_IDENTITIES, json.dumps(self._cidr_ids).encode())

    def _write_cidrs(self, plan: CIDRPlan, protected: set[str]) -> None:
        """Runs in a worker thread: thousands of prefixes are as many syscalls."""
        assert self.map is not None
        for prefix in plan.added:
            if prefix not in WORLD_PREFIXES and prefix not in protected:
                self.map.upsert(prefix, plan.ids[prefix])
        for prefix in plan.removed:
            if prefix in WORLD_PREFIXES:
                self.map.upsert(prefix, reserved.WORLD)
            elif prefix not in protected:
                self.map.delete(prefix)
        # A /0 CIDR rule must not take the world entry away from world.
        for prefix in WORLD_PREFIXES:
            if prefix in plan.ids:
                self.map.upsert(prefix, plan.ids[prefix])

    async def allocate_cidrs(self, wanted: set[str]) -> None:
        """Give every prefix the rules use a node-local identity and an ipcache
        entry; free those no rule uses any more."""
        plan = self.plan_cidrs(wanted)
        if self.map is not None:  # (re)write every entry: restore after a restart
            plan = CIDRPlan(plan.ids, sorted(set(plan.ids) | set(plan.added)), plan.removed)
        await self.commit_cidrs(plan)

    def _protected_prefixes(self) -> set[str]:
        """Prefixes CIDR identities must not take: endpoints' (local and remote) and the host's."""
        return self._local_prefixes() | set(self._remote)

    def _local_prefixes(self) -> set[str]:
        out = {host_prefix(ip) for ip in self._host_ips}
        for prefixes in self._endpoint_prefixes.values():
            out.update(prefixes)
        return out

    def add_local_listener(self, listener: LocalIPListener) -> None:
        """Tell ``listener`` about every local endpoint address, now and on each change."""
        self._listeners.append(listener)
        for ep_id, prefixes in self._endpoint_prefixes.items():
            for prefix in prefixes:
                listener(prefix.split("/")[0], self._endpoint_identity[ep_id])

    def _tell(self, prefixes: Iterable[str], identity: int | None) -> None:
        for prefix in prefixes:
            for listener in self._listeners:
                listener(prefix.split("/")[0], identity)

    def _set_endpoint(self, endpoint_id: int, prefixes: list[str], identity: int) -> None:
        gone = set(self._endpoint_prefixes.get(endpoint_id, ())) - set(prefixes)
        self._endpoint_prefixes[endpoint_id] = prefixes
        self._endpoint_identity[endpoint_id] = identity
        self._tell(gone, None)
        self._tell(prefixes, identity)

    # ---- endpoints ---------------------------------------------------------------

    def upsert_endpoint(self, endpoint_id: int, ips: Iterable[str | None], identity: int) -> None:
        """The endpoint's addresses now stand for ``identity``."""
        prefixes = [host_prefix(ip) for ip in ips if ip]
        self._set_endpoint(endpoint_id, prefixes, identity)
        if self.map is not None:
            for prefix in prefixes:
                self.map.upsert(prefix, identity)

    async def upsert_endpoints(self, changes: Iterable[tuple[int, Iterable[str | None], int]]) -> None:
        """:meth:`upsert_endpoint` for many (endpoint ID, addresses, identity);
        the map writes run in a worker thread."""
        writes: list[tuple[str, int]] = []
        for endpoint_id, ips, identity in changes:
            prefixes = [host_prefix(ip) for ip in ips if ip]
            self._set_endpoint(endpoint_id, prefixes, identity)
            writes.extend((prefix, identity) for prefix in prefixes)
        if self.map is not None and writes:
            await asyncio.to_thread(self._write_entries, writes)

    def _write_entries(self, writes: list[tuple[str, int]]) -> None:
        assert self.map is not None
        for prefix, identity in writes:
            self.map.upsert(prefix, identity)

    def delete_endpoint(self, endpoint_id: int, ips: Iterable[str | None]) -> None:
        """The endpoint is gone: its addresses fall back to a CIDR identity, or
        out of the map (then they are world)."""
        self._tell(self._endpoint_prefixes.pop(endpoint_id, ()), None)
        self._endpoint_identity.pop(endpoint_id, None)
        for ip in ips:
            if ip:
                self._fall_back(host_prefix(ip))

    def _fall_back(self, prefix: str) -> None:
        """``prefix`` is no endpoint's any more: its CIDR identity, or out of the map (world)."""
        if self.map is None:
            return
        if prefix in self._cidr_ids:
            self.map.upsert(prefix, self._cidr_ids[prefix])
        else:
            self.map.delete(prefix)

    # ---- remote endpoints (other nodes') ------------------------------------------------

    def remote_entries(self) -> dict[str, tuple[int, str | None]]:
        """Remote prefix -> (identity, tunnel endpoint), a copy."""
        return dict(self._remote)

    def remote_identity(self, ip: str) -> int | None:
        """The identity another node published for its endpoint ``ip``, if any."""
        entry = self._remote.get(host_prefix(ip))
        return entry[0] if entry is not None else None

    def upsert_remote(self, ip: str, identity: int, tunnel_endpoint: str | None) -> None:
        """Another node's endpoint ``ip`` has ``identity`` and lives behind ``tunnel_endpoint``.

        Local endpoint and host addresses keep their own entry: another node
        cannot claim them. Only an IPv4 tunnel endpoint fits the map's field.
        """
        prefix = host_prefix(ip)
        self._remote[prefix] = (identity, tunnel_endpoint)
        if self.map is None or prefix in self._local_prefixes():
            return
        tunnel = tunnel_endpoint if tunnel_endpoint and ipaddress.ip_address(tunnel_endpoint).version == 4 else 0
        self.map.upsert(prefix, identity, tunnel)

    async def sweep_remote(self) -> list[str]:
        """Delete the entries an earlier run wrote for other nodes that nobody publishes now
        (nodes and endpoints that left while the agent was down). Only once every remote
        source has listed the store: a live node's entry must not flap. Local endpoints'
        entries (restored later) carry no tunnel endpoint and no remote-node identity and stay."""
        dump = getattr(self.map, "dump", None)
        if dump is None:
            return []
        entries = await asyncio.to_thread(dump)
        keep = self._local_prefixes() | set(self._remote)
        stale = [p for p, e in entries.items()
                 if (e.tunnel_endpoint or e.identity == reserved.REMOTE_NODE) and p not in keep]
        for prefix in stale:
            self._fall_back(prefix)
        return stale

    def delete_remote(self, ip: str) -> None:
        """Another node's endpoint ``ip`` is gone."""
        prefix = host_prefix(ip)
        if self._remote.pop(prefix, None) is None:
            return
        if prefix in self._local_prefixes():
            return  # a local endpoint or host address: its own entry stays
        self._fall_back(prefix)
