"""Every map the datapath pins, and :class:`DatapathMaps`, which opens them all.

Every map is pinned by name under a pin root (default
``/sys/fs/bpf/tc/globals``, see :mod:`docker_cilium.defaults`), so the CLI
and a restarted agent open them by path with :meth:`DatapathMaps.open`
without loading the BPF object. tests/unit/test_maps_layout.py checks every
struct in :data:`C_STRUCTS` against the compiled object's BTF and the header.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field

from docker_cilium import defaults
from docker_cilium.datapath.bpf import BpfMap
from docker_cilium.datapath.maps import (cidrmap, configmap, ctbudget, ctmap, eventsmap, ipcache, lbmap, lxcmap,
                                        metricsmap, policymap, socklb, tunnel)
from docker_cilium.datapath.maps.cidrmap import CIDRMap
from docker_cilium.datapath.maps.configmap import ConfigMap
from docker_cilium.datapath.maps.ctbudget import CTBudget
from docker_cilium.datapath.maps.ctmap import CTMap
from docker_cilium.datapath.maps.eventsmap import EventReader
from docker_cilium.datapath.maps.ipcache import IPCache
from docker_cilium.datapath.maps.lbmap import LBMap
from docker_cilium.datapath.maps.lxcmap import EndpointMap
from docker_cilium.datapath.maps.metricsmap import Metrics
from docker_cilium.datapath.maps.policymap import PolicyMap
from docker_cilium.datapath.maps.tunnel import TunnelMap

_MODULES = (lxcmap, policymap, ipcache, ctmap, ctbudget, metricsmap, eventsmap, configmap, lbmap, cidrmap, tunnel)

# pinned map name -> (key type, value type, per-CPU)
MAP_TYPES = {name: types for mod in _MODULES for name, types in mod.MAP_TYPES.items()}
# Pinned maps only the programs use (the agent never reads them): fragment
# tracking. unpin_all removes them.
DATAPATH_ONLY_MAPS = ("cilium_ipv4_frag_datagrams", "cilium_ipv6_frag_datagrams")
# Every map we pin, with its types: MAP_TYPES plus the socket LB's, which are
# pinned only while it is on (--bpf-lb-sock), so DatapathMaps.open does not need them.
KNOWN_MAP_TYPES = {**MAP_TYPES, **socklb.MAP_TYPES}
# C struct name -> its ctypes mirror
C_STRUCTS = {cls.__name__: cls for mod in _MODULES for cls in mod.C_STRUCTS}


@dataclass
class DatapathMaps:
    raw: dict[str, BpfMap] = field(default_factory=dict)

    @classmethod
    def open(cls, pin_root: str = defaults.BPF_PIN_ROOT) -> "DatapathMaps":
        """Open every pinned map by path (no BPF object needed)."""
        raw = {}
        try:
            for name, (k, v, percpu) in MAP_TYPES.items():
                raw[name] = BpfMap.open_pinned(os.path.join(pin_root, name), k, v, percpu)
        except Exception:
            for m in raw.values():
                m.close()
            raise
        return cls(raw)

    def close(self) -> None:
        for m in self.raw.values():
            m.close()

    @property
    def endpoints(self) -> EndpointMap:
        return EndpointMap(self.raw[lxcmap.EP_IFINDEX_MAP], self.raw[lxcmap.LXC_MAP])

    @functools.cached_property
    def policy(self) -> PolicyMap:
        # One instance per open: it carries the write index of the map.
        return PolicyMap(self.raw[policymap.POLICY_MAP])

    @property
    def ipcache(self) -> IPCache:
        return IPCache(self.raw[ipcache.IPCACHE_MAP])

    @property
    def lb(self) -> LBMap:
        return LBMap.from_raw(self.raw)

    @property
    def ct(self) -> CTMap:
        return CTMap(self.raw[ctmap.CT4_MAP], self.raw[ctmap.CT6_MAP])

    @property
    def ct_budget(self) -> CTBudget:
        return CTBudget(self.raw[ctbudget.CT_BUDGET_MAP])

    @property
    def metrics(self) -> Metrics:
        return Metrics(self.raw[metricsmap.METRICS_MAP])

    @property
    def prefilter(self) -> CIDRMap:
        return CIDRMap(self.raw[cidrmap.CIDR4_MAP], self.raw[cidrmap.CIDR6_MAP])

    @property
    def tunnel(self) -> TunnelMap:
        return TunnelMap(self.raw[tunnel.TUNNEL_MAP])

    @property
    def config(self) -> ConfigMap:
        return ConfigMap(self.raw[configmap.CONFIG_MAP])

    @property
    def events_fd(self) -> int:
        return self.raw[eventsmap.EVENTS_MAP].fd

    def event_reader(self, page_cnt: int = 64, wakeup_events: int = 1) -> EventReader:
        return EventReader(self.events_fd, page_cnt, wakeup_events=wakeup_events)
