"""The numbers Python shares with the C datapath equal the header's defines.

Each number has one Python home (the map module that uses it, the reserved
identities in ``docker_cilium.identity.reserved``, the drop reasons in
``docker_cilium.datapath.drop``); this test parses ``bpf_src/lib/*.h`` and
holds every copy to its ``#define``, as test_maps_layout.py does for structs.
A define in one of the shared families (identities, flags, directions, drop
reasons, notification types) must either be mirrored here or listed as C-only,
so a number added on one side only fails the suite.
"""

from __future__ import annotations

import re

from docker_cilium import defaults
from docker_cilium.datapath import drop, marks
from docker_cilium.datapath.loader import SRC_DIR
from docker_cilium.datapath.maps import cidrmap, configmap, ctmap, eventsmap, lxcmap, metricsmap, policymap
from docker_cilium.identity import reserved

# C define -> its Python copy
MIRRORED = {
    "IDENTITY_HOST": reserved.HOST,
    "IDENTITY_WORLD": reserved.WORLD,
    "IDENTITY_REMOTE_NODE": reserved.REMOTE_NODE,
    "IDENTITY_LOCAL_SCOPE_FLAG": reserved.LOCAL_SCOPE,
    "EP_F_INGRESS_ENFORCED": lxcmap.EP_F_INGRESS_ENFORCED,
    "EP_F_EGRESS_ENFORCED": lxcmap.EP_F_EGRESS_ENFORCED,
    "POLICY_INGRESS": policymap.POLICY_INGRESS,
    "POLICY_EGRESS": policymap.POLICY_EGRESS,
    "POLICY_PROTO_L4_MARKER": policymap.POLICY_PROTO_L4_MARKER,
    "METRIC_INGRESS": metricsmap.METRIC_INGRESS,
    "METRIC_EGRESS": metricsmap.METRIC_EGRESS,
    "CT_EGRESS": ctmap.CT_EGRESS,
    "CT_INGRESS": ctmap.CT_INGRESS,
    "CT_SERVICE": ctmap.CT_SERVICE,
    "CT_F_RX_CLOSING": ctmap.CT_F_RX_CLOSING,
    "CT_F_TX_CLOSING": ctmap.CT_F_TX_CLOSING,
    "CT_F_SEEN_NON_SYN": ctmap.CT_F_SEEN_NON_SYN,
    "CT_F_SEEN_REPLY": ctmap.CT_F_SEEN_REPLY,
    "CT_F_LOOPBACK": ctmap.CT_F_LOOPBACK,
    "CT_F_PROXY_REDIRECT": ctmap.CT_F_PROXY_REDIRECT,
    "MARK_MAGIC_HOST_MASK": marks.MARK_MAGIC_HOST_MASK,
    "MARK_MAGIC_TO_PROXY": marks.MARK_MAGIC_TO_PROXY,
    "MARK_MAGIC_PROXY_INGRESS": marks.MARK_MAGIC_PROXY_INGRESS,
    "MARK_MAGIC_PROXY_EGRESS": marks.MARK_MAGIC_PROXY_EGRESS,
    "MARK_MAGIC_IDENTITY": marks.MARK_MAGIC_IDENTITY,
    "CFG_F_DEBUG": configmap.CFG_F_DEBUG,
    **{name: getattr(configmap, name) for name in dir(configmap)
       if name.startswith("MONITOR_AGGREGATION_")},
    "NOTIFY_DROP": eventsmap.NOTIFY_DROP,
    "NOTIFY_DEBUG": eventsmap.NOTIFY_DEBUG,
    "NOTIFY_CAPTURE": eventsmap.NOTIFY_CAPTURE,
    "NOTIFY_TRACE": eventsmap.NOTIFY_TRACE,
    "NOTIFY_POLICY_VERDICT": eventsmap.NOTIFY_POLICY_VERDICT,
    **{name: getattr(eventsmap, name) for name in dir(eventsmap)
       if name.startswith(("TRACE_REASON_", "POLICY_MATCH_", "DBG_")) and name.isupper()
       and isinstance(getattr(eventsmap, name), int)},
    "TRACE_TO_LXC": eventsmap.TRACE_TO_LXC,
    "TRACE_TO_PROXY": eventsmap.TRACE_TO_PROXY,
    "TRACE_TO_HOST": eventsmap.TRACE_TO_HOST,
    "TRACE_TO_STACK": eventsmap.TRACE_TO_STACK,
    "TRACE_TO_OVERLAY": eventsmap.TRACE_TO_OVERLAY,
    "TRACE_FROM_LXC": eventsmap.TRACE_FROM_LXC,
    "TRACE_FROM_OVERLAY": eventsmap.TRACE_FROM_OVERLAY,
    **{name: getattr(drop, name) for name in dir(drop)
       if name.startswith("DROP_") and name != "DROP_REASONS"},
    "REASON_FORWARDED": drop.REASON_FORWARDED,
    "CIDR_MAP_SIZE": cidrmap.CIDR_MAP_SIZE,
}

# Defines of the shared families that no Python code reads.
C_ONLY = {
    "IDENTITY_UNKNOWN",         # the datapath never looks it up
    "CT_F_NODE_PORT",           # reserved (load balancer)
    "NOTIFY_CAPTURE_LEN",       # capture size; events carry their own len_cap
    "POLICY_MAP_SIZE",          # map sizes are compile-time (-D); Python never assumes them
}

SHARED_FAMILIES = re.compile(r"^(IDENTITY_|EP_F_|POLICY_|METRIC_|CT_EGRESS$|CT_INGRESS$|CT_F_|"
                             r"CFG_F_|NOTIFY_|TRACE_|DROP_|REASON_|MONITOR_AGGREGATION_|DBG_|MARK_MAGIC_)")

_DEFINE = re.compile(r"^#define\s+(\w+)\s+(.*?)\s*(?:/\*.*)?$")
_NUMBER = re.compile(r"^\(?\s*(0x[0-9a-fA-F]+|\d+)\s*(?:<<\s*(\d+))?\s*\)?$")


def header_defines() -> dict[str, int]:
    """Every numeric ``#define NAME N`` / ``#define NAME (A << B)`` in lib/*.h
    (N decimal or 0x hex)."""
    out: dict[str, int] = {}
    for header in sorted((SRC_DIR / "lib").glob("*.h")):
        for line in header.read_text().splitlines():
            m = _DEFINE.match(line.strip())
            if not m:
                continue
            num = _NUMBER.match(m.group(2))
            if not num:
                continue
            value = int(num.group(1), 0) << int(num.group(2) or 0)
            assert out.get(m.group(1), value) == value, f"{m.group(1)} defined twice differently"
            out[m.group(1)] = value
    return out


def test_header_parse_finds_the_shared_defines():
    defines = header_defines()
    assert defines["DROP_POLICY_L4"] == 159 and defines["CT_F_SEEN_NON_SYN"] == 4
    assert defines["MARK_MAGIC_TO_PROXY"] == 0x0200
    assert len([n for n in defines if SHARED_FAMILIES.match(n)]) >= len(MIRRORED)


def test_python_copies_equal_the_header():
    defines = header_defines()
    missing = sorted(n for n in MIRRORED if n not in defines)
    assert not missing, f"mirrored in Python but not #defined in bpf_src/lib: {missing}"
    wrong = {n: (v, defines[n]) for n, v in MIRRORED.items() if defines[n] != v}
    assert not wrong, f"Python value != header value (python, C): {wrong}"


def test_every_shared_define_is_mirrored_or_c_only():
    defines = header_defines()
    unaccounted = sorted(n for n in defines if SHARED_FAMILIES.match(n)
                         and n not in MIRRORED and n not in C_ONLY)
    assert not unaccounted, f"#defines with no Python copy (mirror them or list as C-only): {unaccounted}"
    assert not C_ONLY - defines.keys(), "C_ONLY names a define the headers no longer have"


def test_drop_reason_texts_cover_exactly_the_header_reasons():
    defines = header_defines()
    header = {v for n, v in defines.items() if n.startswith("DROP_") or n == "REASON_FORWARDED"}
    assert set(drop.DROP_REASONS) == header


def test_trace_point_names_cover_exactly_the_header_points():
    defines = header_defines()
    assert set(eventsmap.TRACE_OBS_POINTS) == {v for n, v in defines.items()
                                               if n.startswith("TRACE_") and not n.startswith("TRACE_REASON_")}


def test_monitor_names_cover_exactly_the_header_values():
    """Every trace reason, match type and aggregation level the datapath can
    write has its text (the agent renders events with them)."""
    defines = header_defines()

    def values(prefix: str) -> set[int]:
        return {v for n, v in defines.items() if n.startswith(prefix)}
    assert set(eventsmap.TRACE_REASONS) == values("TRACE_REASON_")
    assert set(eventsmap.POLICY_MATCH_TYPES) == values("POLICY_MATCH_")
    assert set(configmap.AGGREGATION_NAMES) == values("MONITOR_AGGREGATION_")
    assert set(eventsmap.DEBUG_MESSAGES) == values("DBG_")
