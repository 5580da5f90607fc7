"""cilium_ct_budget: per-endpoint budget of unreplied conntrack entries
(bpf_src/lib/conntrack.h), an ARRAY indexed by endpoint id.

The programs keep it; the agent only zeroes an endpoint's slot when the
endpoint is deleted, because endpoint ids are reused: a new endpoint must
not start with the count (or the lent units) of the one before it.
"""

from __future__ import annotations

import ctypes

from docker_cilium.datapath.bpf import BpfMap, u32

CT_BUDGET_MAP = "cilium_ct_budget"


class ct_budget(ctypes.Structure):
    """bpf_src/lib/common.h ``struct ct_budget``."""
    _fields_ = [("window_start", u32), ("count", ctypes.c_int32)]


class CTBudget:
    """cilium_ct_budget[lxc_id]: (window start, unreplied entries charged)."""

    def __init__(self, m: BpfMap):
        self.m = m

    def get(self, lxc_id: int) -> ct_budget:
        v = self.m.lookup(u32(lxc_id))
        return v if v is not None else ct_budget()

    def set(self, lxc_id: int, window_start: int, count: int) -> None:
        self.m.update(u32(lxc_id), ct_budget(window_start, count))

    def reset(self, lxc_id: int) -> None:
        """A fresh budget for the next endpoint with this id."""
        self.set(lxc_id, 0, 0)


# pinned name -> (key, value, per-CPU); the structs this module mirrors
MAP_TYPES = {CT_BUDGET_MAP: (u32, ct_budget, False)}
C_STRUCTS = (ct_budget,)
