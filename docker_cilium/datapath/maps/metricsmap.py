"""cilium_metrics (per-CPU): packets and bytes per (drop reason, direction)
(Cilium's ``pkg/maps/metricsmap``); reason 0 counts forwarded packets."""

from __future__ import annotations

import ctypes

from docker_cilium.datapath.bpf import BpfMap, u8, u16, u64

METRICS_MAP = "cilium_metrics"

# bpf_src/lib/common.h: metrics_key.dir
METRIC_INGRESS = 1      # to-container
METRIC_EGRESS = 2       # from-container


class metrics_key(ctypes.Structure):
    """bpf_src/lib/common.h ``struct metrics_key``."""
    _fields_ = [("reason", u8), ("dir", u8), ("pad", u16)]


class metrics_value(ctypes.Structure):
    """bpf_src/lib/common.h ``struct metrics_value`` (one per CPU)."""
    _fields_ = [("count", u64), ("bytes", u64)]


class Metrics:
    """cilium_metrics (per-CPU): (reason, direction) -> packets, bytes."""

    def __init__(self, m: BpfMap):
        self.m = m

    def dump(self) -> dict[tuple[int, int], tuple[int, int]]:
        out = {}
        for k, vals in self.m.items():
            out[(k.reason, k.dir)] = (sum(v.count for v in vals), sum(v.bytes for v in vals))
        return out

    def count(self, reason: int, direction: int | None = None) -> int:
        return sum(c for (r, d), (c, _) in self.dump().items()
                   if r == reason and (direction is None or d == direction))


# pinned name -> (key, value, per-CPU); the structs this module mirrors
MAP_TYPES = {METRICS_MAP: (metrics_key, metrics_value, True)}
C_STRUCTS = (metrics_key, metrics_value)
