"""The ipcache: which identity every known address prefix has (Cilium's ``pkg/ipcache``).

The datapath looks up a packet's peer address in the LPM ``cilium_ipcache``
map to learn its identity. This module is the only writer of that map:

* ``0.0.0.0/0`` and ``::/0`` -> ``reserved:world``; the host's own addresses
  -> ``reserved:host`` (written at start);
* each endpoint address (``/32``, ``/128``) -> the endpoint's identity;
* each prefix a CIDR rule names -> a node-local CIDR identity, allocated here
  (from ``LOCAL_IDENTITY_BASE``) and persisted so numbers survive restarts.

Host and endpoint addresses keep their identity even when a CIDR rule names
exactly them: CIDR rules only describe non-endpoints.
"""

from __future__ import annotations

import ipaddress
import json
from typing import Iterable, Protocol

from docker_cilium.identity import reserved
from docker_cilium.kvstore import keys
from docker_cilium.kvstore.backend import Backend
from docker_cilium.policy.api.cidr import cidr_identity_labels

LOCAL_IDENTITY_BASE = reserved.LOCAL_SCOPE  # node-local identities (CIDR)
WORLD_PREFIXES = ("0.0.0.0/0", "::/0")


class IPCacheMap(Protocol):
    """The pinned ``cilium_ipcache`` map (``datapath.maps.IPCache``; a fake in unit tests)."""

    def upsert(self, prefix: str, identity: int) -> None: ...
    def delete(self, prefix: str) -> bool: ...


def host_prefix(ip: str) -> str:
    """``10.0.0.1`` -> ``10.0.0.1/32``, ``f00d::1`` -> ``f00d::1/128``."""
    addr = ipaddress.ip_address(ip)
    return f"{addr}/{32 if addr.version == 4 else 128}"


class IPCache:
    """Prefix -> identity, for the datapath (the BPF map) and the identity cache
    (the CIDR identities). ``bpf_map`` is None when the agent runs without BPF."""

    def __init__(self, store: Backend, bpf_map: IPCacheMap | None) -> None:
        self.store = store
        self.map = bpf_map
        self._cidr_ids: dict[str, int] = {}
        self._host_ips: set[str] = set()
        self._endpoint_prefixes: dict[int, list[str]] = {}  # endpoint ID -> its /32 and /128

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

    # ---- CIDR identities ---------------------------------------------------------

    def local_identities(self) -> dict[int, list[str]]:
        """Node-local identity -> its labels (``cidr:...`` and ``reserved:world``)."""
        return {num: sorted(cidr_identity_labels(prefix)) for prefix, num in self._cidr_ids.items()}

    async def allocate_cidrs(self, wanted: set[str]) -> None:
        """Give every prefix the rules use a node-local identity and an ipcache
        entry; free those no rule uses any more."""
        changed = False
        for prefix in sorted(wanted - set(self._cidr_ids)):
            used = set(self._cidr_ids.values())
            num = next(n for n in range(LOCAL_IDENTITY_BASE + 1, LOCAL_IDENTITY_BASE + (1 << 24)) if n not in used)
            self._cidr_ids[prefix] = num
            changed = True
        stale = set(self._cidr_ids) - wanted
        for prefix in stale:
            del self._cidr_ids[prefix]
            changed = True
        if self.map is not None:
            protected = self._protected_prefixes()
            for prefix, num in self._cidr_ids.items():
                if prefix not in WORLD_PREFIXES and prefix not in protected:
                    self.map.upsert(prefix, num)
            for prefix in stale:
                if prefix in WORLD_PREFIXES:
                    self.map.upsert(prefix, reserved.WORLD)
                elif prefix not in protected:
                    self.map.delete(prefix)
            # A /0 CIDR rule must not take the world entry away from world.
            for prefix in WORLD_PREFIXES:
                if prefix in self._cidr_ids:
                    self.map.upsert(prefix, self._cidr_ids[prefix])
        if changed:
            await self.store.put(keys.CIDR_IDENTITIES, json.dumps(self._cidr_ids).encode())

    def _protected_prefixes(self) -> set[str]:
        out = {host_prefix(ip) for ip in self._host_ips}
        for prefixes in self._endpoint_prefixes.values():
            out.update(prefixes)
        return out

    # ---- endpoints ---------------------------------------------------------------

    def upsert_endpoint(self, endpoint_id: int, ips: Iterable[str | None], identity: int) -> None:
        """The endpoint's addresses now stand for ``identity``."""
        prefixes = [host_prefix(ip) for ip in ips if ip]
        self._endpoint_prefixes[endpoint_id] = prefixes
        if self.map is not None:
            for prefix in prefixes:
                self.map.upsert(prefix, identity)

    def delete_endpoint(self, endpoint_id: int, ips: Iterable[str | None]) -> None:
        """The endpoint is gone: its addresses fall back to a CIDR identity, or
        out of the map (then they are world)."""
        self._endpoint_prefixes.pop(endpoint_id, None)
        if self.map is None:
            return
        for ip in ips:
            if not ip:
                continue
            prefix = host_prefix(ip)
            if prefix in self._cidr_ids:
                self.map.upsert(prefix, self._cidr_ids[prefix])
            else:
                self.map.delete(prefix)
