"""cilium_config: the datapath's run-time flags, one ARRAY slot at key 0
(as Cilium's ``pkg/maps/configmap``)."""

from __future__ import annotations

import ctypes

from docker_cilium.datapath.bpf import BpfMap, u32, u64

CONFIG_MAP = "cilium_config"

# bpf_src/lib/common.h: cilium_config flags (datapath_config.flags)
CFG_F_TRACE = 1 << 0
CFG_F_DEBUG = 1 << 1


class datapath_config(ctypes.Structure):
    """bpf_src/lib/common.h ``struct datapath_config``."""
    _fields_ = [("flags", u32), ("pad", u32), ("reserved", u64 * 3)]


class ConfigMap:
    """cilium_config[0]: datapath runtime flags (CFG_F_TRACE, CFG_F_DEBUG)."""

    def __init__(self, m: BpfMap):
        self.m = m

    def get(self) -> datapath_config:
        v = self.m.lookup(u32(0))
        return v if v is not None else datapath_config()

    def set_flags(self, flags: int) -> None:
        v = self.get()
        v.flags = flags
        self.m.update(u32(0), v)

    def set_trace(self, enabled: bool) -> None:
        v = self.get()
        self.set_flags((v.flags | CFG_F_TRACE) if enabled else (v.flags & ~CFG_F_TRACE))


# pinned name -> (key, value, per-CPU); the structs this module mirrors
MAP_TYPES = {CONFIG_MAP: (u32, datapath_config, False)}
C_STRUCTS = (datapath_config,)
