"""cilium_config: the datapath's run-time settings, one ARRAY slot at key 0
(as Cilium's ``pkg/maps/configmap``): flags (CFG_F_DEBUG) and the monitor
aggregation level, read by the programs on every packet, so that changing
them needs no recompilation."""

from __future__ import annotations

import ctypes
import socket

from docker_cilium.datapath.bpf import BpfMap, ip4_to_be32, u16, u32, u64

CONFIG_MAP = "cilium_config"

# bpf_src/lib/common.h: cilium_config flags (datapath_config.flags)
CFG_F_DEBUG = 1 << 1

# bpf_src/lib/common.h: datapath_config.monitor_aggregation (Cilium's levels)
MONITOR_AGGREGATION_NONE = 0
MONITOR_AGGREGATION_LOWEST = 1
MONITOR_AGGREGATION_LOW = 2
MONITOR_AGGREGATION_MEDIUM = 3
MONITOR_AGGREGATION_MAX = 4
DEFAULT_MONITOR_AGGREGATION = MONITOR_AGGREGATION_MEDIUM

# Cilium's names (pkg/option/monitor.go): accepted spellings -> level
_AGGREGATION_NAMES = {"": MONITOR_AGGREGATION_NONE, "none": MONITOR_AGGREGATION_NONE,
                      "disabled": MONITOR_AGGREGATION_NONE, "lowest": MONITOR_AGGREGATION_LOWEST,
                      "low": MONITOR_AGGREGATION_LOW, "medium": MONITOR_AGGREGATION_MEDIUM,
                      "max": MONITOR_AGGREGATION_MAX, "maximum": MONITOR_AGGREGATION_MAX}
# level -> its canonical name (the flag's and the runtime option's spelling)
AGGREGATION_NAMES = {MONITOR_AGGREGATION_NONE: "none", MONITOR_AGGREGATION_LOWEST: "lowest",
                     MONITOR_AGGREGATION_LOW: "low", MONITOR_AGGREGATION_MEDIUM: "medium",
                     MONITOR_AGGREGATION_MAX: "maximum"}


def parse_monitor_aggregation(value: object) -> int:
    """A level name (any case) or number 0-4 -> the level, as Cilium's
    ParseMonitorAggregationLevel; ValueError with the accepted forms otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"invalid monitor aggregation level {value!r}")
    if isinstance(value, int):
        text = str(value)
    elif isinstance(value, str):
        text = value.strip().lower()
    else:
        raise ValueError(f"invalid monitor aggregation level {value!r}: expected a string")
    if text in _AGGREGATION_NAMES:
        return _AGGREGATION_NAMES[text]
    if text.lstrip("-").isdigit():
        level = int(text)
        if MONITOR_AGGREGATION_NONE <= level <= MONITOR_AGGREGATION_MAX:
            return level
        raise ValueError(f"monitor aggregation level must be between {MONITOR_AGGREGATION_NONE} "
                         f"and {MONITOR_AGGREGATION_MAX}")
    raise ValueError(f"invalid monitor aggregation level {value!r} "
                     f"(none, lowest, low, medium, maximum or 0-4)")


def canonical_monitor_aggregation(value: object) -> str:
    """Any accepted spelling -> the canonical name ("MAX", 4 -> "maximum")."""
    return AGGREGATION_NAMES[parse_monitor_aggregation(value)]


class datapath_config(ctypes.Structure):
    """bpf_src/lib/common.h ``struct datapath_config``."""
    _fields_ = [("flags", u32), ("monitor_aggregation", u32), ("host_ifindex", u32), ("tunnel_ifindex", u32),
                ("tunnel_port", u16), ("pad2", u16), ("node_ipv4", u32), ("reserved", u64 * 1)]


class ConfigMap:
    """cilium_config[0]: datapath run-time settings (CFG_F_DEBUG, monitor
    aggregation level)."""

    def __init__(self, m: BpfMap):
        self.m = m

    def get(self) -> datapath_config:
        v = self.m.lookup(u32(0))
        return v if v is not None else datapath_config()

    def set_flags(self, flags: int) -> None:
        v = self.get()
        v.flags = flags
        self.m.update(u32(0), v)

    def set_debug(self, enabled: bool) -> None:
        """NOTIFY_DEBUG events on (Cilium's Debug option) or off."""
        v = self.get()
        self.set_flags((v.flags | CFG_F_DEBUG) if enabled else (v.flags & ~CFG_F_DEBUG))

    def set_monitor_aggregation(self, level: int) -> None:
        """Which trace events the datapath emits (MONITOR_AGGREGATION_*)."""
        if not MONITOR_AGGREGATION_NONE <= level <= MONITOR_AGGREGATION_MAX:
            raise ValueError(f"monitor aggregation level {level} out of range")
        v = self.get()
        v.monitor_aggregation = level
        self.m.update(u32(0), v)

    def set_host_ifindex(self, ifindex: int) -> None:
        """cilium_host's ifindex: to-container hands connections for an
        ingress proxy to its tc ingress (``from-host``)."""
        v = self.get()
        v.host_ifindex = ifindex
        self.m.update(u32(0), v)

    def set_tunnel_ifindex(self, ifindex: int, port: int = 0, node_ipv4: str | None = None) -> None:
        """cilium_vxlan's ifindex: where the programs send traffic for other
        nodes, encapsulated (0: tunnel disabled, nothing is encapsulated); its
        UDP port, which containers may not send to (a VXLAN header of their
        own would name any identity to the receiving node); and this node's
        IPv4, the outer source, the address other nodes admit tunnel packets
        from (None: the kernel picks one)."""
        v = self.get()
        v.tunnel_ifindex = ifindex
        v.tunnel_port = socket.htons(port)
        v.node_ipv4 = ip4_to_be32(node_ipv4) if node_ipv4 else 0
        self.m.update(u32(0), v)

    @property
    def monitor_aggregation(self) -> int:
        return self.get().monitor_aggregation


# pinned name -> (key, value, per-CPU); the structs this module mirrors
MAP_TYPES = {CONFIG_MAP: (u32, datapath_config, False)}
C_STRUCTS = (datapath_config,)
