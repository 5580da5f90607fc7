"""Python's view of the datapath's numbers stays in step with bpf_src/lib:
every drop reason the programs can report has its (Cilium) name, the CT
entry flags agree, and every map the object pins is known by name."""

from __future__ import annotations

import re

from docker_cilium.datapath import maps
from docker_cilium.datapath.loader import SRC_DIR

COMMON_H = (SRC_DIR / "lib" / "common.h").read_text()


def _defines(prefix: str) -> dict[str, int]:
    out = {}
    for name, value in re.findall(rf"^#define\s+({prefix}\w+)\s+(\(1 << \d+\)|\d+)",
                                  COMMON_H, re.M):
        out[name] = eval(value)  # noqa: S307 - literals and shifts from our own header
    return out


def test_every_drop_reason_has_a_name():
    reasons = _defines("DROP_")
    assert reasons, "no DROP_* in common.h"
    missing = {n: v for n, v in reasons.items() if v not in maps.DROP_REASONS}
    assert not missing, missing
    assert maps.DROP_REASONS[139] == "Unsupported L3 protocol"
    assert maps.DROP_REASONS[175] == "First logical datagram fragment not found"


def test_ct_flags_match():
    flags = _defines("CT_F_")
    for name in ("CT_F_RX_CLOSING", "CT_F_TX_CLOSING", "CT_F_SEEN_NON_SYN", "CT_F_SEEN_REPLY"):
        assert getattr(maps, name) == flags[name], name


def test_every_pinned_map_is_named():
    maps_h = (SRC_DIR / "lib" / "maps.h").read_text()
    pinned = set(re.findall(r"^\}\s*(cilium_\w+)\s+__section", maps_h, re.M))
    assert pinned == set(maps.MAP_NAMES)
