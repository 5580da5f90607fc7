"""cilium_events: the perf event array the datapath writes its monitor events
to (drop, trace, policy-verdict, debug; Cilium's ``pkg/maps/eventsmap``), the
event layout, and a libbpf ``perf_buffer`` reader for it.

Every number here mirrors a ``#define`` of bpf_src/lib/common.h
(tests/unit/test_c_constants.py holds them to it); the texts are Cilium's
(``pkg/monitor``), so that the agent can render Cilium's monitor lines."""

from __future__ import annotations

import ctypes
import errno
import ipaddress
from dataclasses import dataclass
from typing import Callable

from docker_cilium.datapath.bpf import check, libbpf, u8, u16, u32, u64
from docker_cilium.datapath.drop import DROP_REASONS
from docker_cilium.datapath.maps.metricsmap import METRIC_EGRESS, METRIC_INGRESS

EVENTS_MAP = "cilium_events"

# bpf_src/lib/common.h: notification types (notify_msg.type)
NOTIFY_DROP = 1
NOTIFY_DEBUG = 2
NOTIFY_CAPTURE = 3
NOTIFY_TRACE = 4
NOTIFY_POLICY_VERDICT = 5
# events the agent itself adds (never from BPF): the "type" of agent events
NOTIFY_AGENT = 130
NOTIFY_TYPES = {NOTIFY_DROP: "drop", NOTIFY_DEBUG: "debug", NOTIFY_CAPTURE: "capture",
                NOTIFY_TRACE: "trace", NOTIFY_POLICY_VERDICT: "policy-verdict", NOTIFY_AGENT: "agent"}
# bpf_src/lib/common.h: trace observation points (notify_msg.subtype of NOTIFY_TRACE)
TRACE_TO_LXC = 0
TRACE_TO_PROXY = 1
TRACE_TO_HOST = 2
TRACE_TO_STACK = 3
TRACE_TO_OVERLAY = 4
TRACE_FROM_LXC = 5
TRACE_FROM_OVERLAY = 9
TRACE_OBS_POINTS = {TRACE_TO_LXC: "to-endpoint", TRACE_TO_PROXY: "to-proxy",
                    TRACE_TO_HOST: "to-host", TRACE_TO_STACK: "to-stack",
                    TRACE_TO_OVERLAY: "to-overlay", TRACE_FROM_LXC: "from-endpoint",
                    TRACE_FROM_OVERLAY: "from-overlay"}
# trace reasons (notify_msg.reason of NOTIFY_TRACE): the connection state
TRACE_REASON_POLICY = 0
TRACE_REASON_CT_ESTABLISHED = 1
TRACE_REASON_CT_REPLY = 2
TRACE_REASON_CT_RELATED = 3
TRACE_REASONS = {TRACE_REASON_POLICY: "new", TRACE_REASON_CT_ESTABLISHED: "established",
                 TRACE_REASON_CT_REPLY: "reply", TRACE_REASON_CT_RELATED: "related"}
# policy verdict match types (notify_msg.match_type of NOTIFY_POLICY_VERDICT)
POLICY_MATCH_NONE = 0
POLICY_MATCH_L3_ONLY = 1
POLICY_MATCH_L3_L4 = 2
POLICY_MATCH_L4_ONLY = 3
POLICY_MATCH_ALL = 4
POLICY_MATCH_TYPES = {POLICY_MATCH_NONE: "none", POLICY_MATCH_L3_ONLY: "L3-Only",
                      POLICY_MATCH_L3_L4: "L3-L4", POLICY_MATCH_L4_ONLY: "L4-Only",
                      POLICY_MATCH_ALL: "all"}
# notify_msg.direction (drop, policy verdict): METRIC_INGRESS / METRIC_EGRESS
DIRECTION_INGRESS = METRIC_INGRESS
DIRECTION_EGRESS = METRIC_EGRESS
DIRECTIONS = {DIRECTION_INGRESS: "ingress", DIRECTION_EGRESS: "egress"}
# debug message types (notify_msg.subtype of NOTIFY_DEBUG), Cilium's numbering
DBG_LOCAL_DELIVERY = 2
DBG_POLICY_DENIED = 5
DBG_CT_VERDICT = 15
DBG_TO_STACK = 20
DBG_CT_LOOKUP4_1 = 48
DBG_CT_LOOKUP4_2 = 49
DBG_CT_CREATED4 = 50
DBG_CT_LOOKUP6_1 = 51
DBG_CT_LOOKUP6_2 = 52
DBG_CT_CREATED6 = 53


def _ip4(arg: int) -> str:
    """A u32 the datapath copied from a packet (network order in memory)."""
    return str(ipaddress.IPv4Address(arg.to_bytes(4, "little")))


def _ip6_tail(arg: int) -> str:
    """The last 4 bytes of an IPv6 address, as Cilium prints them ([::x:y])."""
    v = int.from_bytes(arg.to_bytes(4, "little"), "big")
    return f"{v >> 16:x}:{v & 0xffff:x}"


def _ct_state(arg: int) -> str:
    return {0: "New", 1: "Established", 2: "Reply", 3: "Related"}.get(arg, DROP_REASONS.get(arg, str(arg)))


# DBG_* -> Cilium's message (pkg/monitor/datapath_debug.go), from (arg1, arg2, arg3)
DEBUG_MESSAGES: dict[int, Callable[[int, int, int], str]] = {
    DBG_LOCAL_DELIVERY: lambda a1, a2, _a3:
        f"Attempting local delivery for container id {a1} from seclabel {a2}",
    DBG_POLICY_DENIED: lambda a1, a2, _a3: f"Policy evaluation would deny packet from {a1} to {a2}",
    DBG_CT_VERDICT: lambda a1, _a2, _a3: f"CT verdict: {_ct_state(a1)}, revnat=0",
    DBG_TO_STACK: lambda a1, _a2, _a3: f"Going to the stack, policy-skip={a1}",
    DBG_CT_LOOKUP4_1: lambda a1, a2, a3:
        f"Conntrack lookup 1/2: src={_ip4(a1)}:{a3 >> 16} dst={_ip4(a2)}:{a3 & 0xffff}",
    DBG_CT_LOOKUP4_2: lambda a1, _a2, _a3: f"Conntrack lookup 2/2: nexthdr={a1 >> 8} flags={a1 & 0xff}",
    DBG_CT_CREATED4: lambda _a1, a2, _a3:
        f"Conntrack create: proxy-port=0 revnat=0 src-identity={a2} lb=0.0.0.0",
    DBG_CT_LOOKUP6_1: lambda a1, a2, a3:
        f"Conntrack lookup 1/2: src=[::{_ip6_tail(a1)}]:{a3 >> 16} dst=[::{_ip6_tail(a2)}]:{a3 & 0xffff}",
    DBG_CT_LOOKUP6_2: lambda a1, _a2, _a3: f"Conntrack lookup 2/2: nexthdr={a1 >> 8} flags={a1 & 0xff}",
    DBG_CT_CREATED6: lambda _a1, a2, _a3: f"Conntrack create: proxy-port=0 revnat=0 src-identity={a2}",
}


def debug_message(subtype: int, arg1: int, arg2: int, arg3: int) -> str:
    """Cilium's text of a NOTIFY_DEBUG event."""
    fmt = DEBUG_MESSAGES.get(subtype)
    if fmt is None:
        return f"Unknown message type={subtype} arg1={arg1} arg2={arg2}"
    return fmt(arg1, arg2, arg3)


class notify_msg(ctypes.Structure):
    """bpf_src/lib/common.h ``struct notify_msg`` (event header)."""
    _fields_ = [
        ("type", u8),
        ("subtype", u8),
        ("source", u16),
        ("hash", u32),
        ("len_orig", u32),
        ("len_cap", u32),
        ("src_label", u32),
        ("dst_label", u32),
        ("dst_id", u32),
        ("ifindex", u32),
        ("reason", u8),
        ("direction", u8),
        ("match_type", u8),
        ("proto", u8),
        ("dport", u16),
        ("pad", u16),
        ("verdict", u32),
        ("arg1", u32),
        ("arg2", u32),
        ("arg3", u32),
    ]


@dataclass
class DatapathEvent:
    """One cilium_events record, decoded. Fields that do not apply to the
    event's type are 0."""
    cpu: int
    type: int               # NOTIFY_*
    subtype: int            # drop reason / trace observation point / DBG_*
    source: int             # lxc_id of the endpoint the event is about
    hash: int
    len_orig: int
    len_cap: int
    src_label: int          # source security identity
    dst_label: int          # destination security identity
    dst_id: int             # destination endpoint (lxc_id), 0 = not local
    ifindex: int
    data: bytes             # first len_cap bytes of the packet (Ethernet frame)
    reason: int = 0         # trace: TRACE_REASON_* (connection state)
    direction: int = 0      # drop, policy verdict: DIRECTION_INGRESS / DIRECTION_EGRESS
    match_type: int = 0     # policy verdict: POLICY_MATCH_*
    verdict: int = 0        # policy verdict: 0 allowed, else the drop reason
    dport: int = 0          # policy verdict: destination port (host order)
    proto: int = 0          # policy verdict: L4 protocol number
    arg1: int = 0           # debug arguments
    arg2: int = 0
    arg3: int = 0

    @property
    def drop_reason(self) -> str:
        """Cilium's text of a drop's reason (NOTIFY_DROP subtype)."""
        return DROP_REASONS.get(self.subtype, str(self.subtype))

    @property
    def type_name(self) -> str:
        return NOTIFY_TYPES.get(self.type, str(self.type))

    @property
    def message(self) -> str:
        """Cilium's text of a debug event's message."""
        return debug_message(self.subtype, self.arg1, self.arg2, self.arg3)


def decode_event(cpu: int, raw: bytes) -> DatapathEvent | None:
    """One perf sample -> DatapathEvent; None if shorter than the header."""
    hdr_len = ctypes.sizeof(notify_msg)
    if len(raw) < hdr_len:
        return None
    h = notify_msg.from_buffer_copy(raw[:hdr_len])
    return DatapathEvent(cpu, h.type, h.subtype, h.source, h.hash, h.len_orig, h.len_cap,
                         h.src_label, h.dst_label, h.dst_id, h.ifindex,
                         raw[hdr_len:hdr_len + h.len_cap], reason=h.reason,
                         direction=h.direction, match_type=h.match_type, verdict=h.verdict,
                         dport=h.dport, proto=h.proto, arg1=h.arg1, arg2=h.arg2, arg3=h.arg3)


_SAMPLE_CB = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p,
                              ctypes.c_uint32)
_LOST_CB = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int, ctypes.c_uint64)
_RAW_CB = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p)

# <linux/perf_event.h>, <bpf/libbpf.h>: what a batching reader's ring needs
PERF_TYPE_SOFTWARE = 1
PERF_COUNT_SW_BPF_OUTPUT = 10
PERF_SAMPLE_RAW = 1 << 10
PERF_RECORD_LOST = 2
PERF_RECORD_SAMPLE = 9
LIBBPF_PERF_EVENT_CONT = -2


class perf_event_attr(ctypes.Structure):
    """The first 64 bytes of ``struct perf_event_attr`` (PERF_ATTR_SIZE_VER0)."""
    _fields_ = [("type", u32), ("size", u32), ("config", u64), ("sample_period", u64),
                ("sample_type", u64), ("read_format", u64), ("flags", u64), ("wakeup_events", u32),
                ("bp_type", u32), ("config1", u64)]


class EventReader:
    """Reads cilium_events (every NOTIFY_* type) through libbpf's
    perf_buffer. Creating a reader installs ITS per-CPU ring fds into the map,
    so exactly one reader should exist at a time. ``fileno()`` is an epoll fd usable with
    ``loop.add_reader``; call :meth:`consume` / :meth:`poll` to get events.

    ``wakeup_events``: the kernel wakes the epoll fd after that many events
    per CPU (1: every event, the lowest latency). Each wakeup is an interrupt
    the sending CPU raises inside the datapath program: on this project's VM
    about 30 us per traced packet at 1 against about 2 us at 64
    (bench/monitor_overhead.py). A reader that expects high rates (``none``
    aggregation) wants more than 1, and must then also :meth:`consume` on a
    timer, or up to ``wakeup_events - 1`` events per CPU wait for the next."""

    def __init__(self, events_fd: int, page_cnt: int = 64,
                 on_lost: Callable[[int, int], None] | None = None, wakeup_events: int = 1):
        """``on_lost(cpu, count)`` is called (inside consume/poll) for every
        perf ring overflow record; ``self.lost`` counts them all either way."""
        self.events: list[DatapathEvent] = []
        self.lost = 0
        self._on_lost_cb = on_lost
        self._sample = _SAMPLE_CB(self._on_sample)
        self._lost = _LOST_CB(self._on_lost)
        self._raw = _RAW_CB(self._on_raw)
        if wakeup_events <= 1:
            pb = libbpf().perf_buffer__new(events_fd, page_cnt, self._sample, self._lost, None, None)
        else:
            attr = perf_event_attr(type=PERF_TYPE_SOFTWARE, size=ctypes.sizeof(perf_event_attr),
                                   config=PERF_COUNT_SW_BPF_OUTPUT, sample_period=1,
                                   sample_type=PERF_SAMPLE_RAW, wakeup_events=wakeup_events)
            pb = libbpf().perf_buffer__new_raw(events_fd, page_cnt, ctypes.byref(attr), self._raw,
                                               None, None)
        if not pb:
            check(-ctypes.get_errno() or -errno.EINVAL, "perf_buffer__new")
        self._pb = pb

    def _on_raw(self, _ctx, cpu, record):
        """A perf record of a batching ring: header (type u32, misc u16,
        size u16), then a sample's u32 size and data or a loss's id and count."""
        kind = ctypes.c_uint32.from_address(record).value
        if kind == PERF_RECORD_SAMPLE:
            self._on_sample(None, cpu, record + 12, ctypes.c_uint32.from_address(record + 8).value)
        elif kind == PERF_RECORD_LOST:
            self._on_lost(None, cpu, ctypes.c_uint64.from_address(record + 16).value)
        return LIBBPF_PERF_EVENT_CONT

    def _on_sample(self, _ctx, cpu, data, size):
        ev = decode_event(cpu, ctypes.string_at(data, size))
        if ev is not None:
            self.events.append(ev)

    def _on_lost(self, _ctx, cpu, cnt):
        self.lost += cnt
        if self._on_lost_cb is not None:
            self._on_lost_cb(cpu, cnt)

    def fileno(self) -> int:
        return libbpf().perf_buffer__epoll_fd(self._pb)

    def poll(self, timeout_ms: int = 100) -> list[DatapathEvent]:
        ret = libbpf().perf_buffer__poll(self._pb, timeout_ms)
        if ret < 0 and -ret != errno.EINTR:
            check(ret, "perf_buffer__poll")
        out, self.events = self.events, []
        return out

    def consume(self) -> list[DatapathEvent]:
        libbpf().perf_buffer__consume(self._pb)
        out, self.events = self.events, []
        return out

    def close(self) -> None:
        if self._pb:
            libbpf().perf_buffer__free(self._pb)
            self._pb = None


# pinned name -> (key, value, per-CPU); the structs this module mirrors
# (notify_msg is the payload of an event, not a key or value)
MAP_TYPES = {EVENTS_MAP: (u32, u32, False)}
C_STRUCTS = (notify_msg,)
