"""cilium_events: the perf event array the datapath writes drop and trace
notifications to (Cilium's ``pkg/maps/eventsmap``), and a libbpf
``perf_buffer`` reader for it."""

from __future__ import annotations

import ctypes
import errno
from dataclasses import dataclass

from docker_cilium.datapath.bpf import check, libbpf, u8, u16, u32
from docker_cilium.datapath.drop import DROP_REASONS

EVENTS_MAP = "cilium_events"

# bpf_src/lib/common.h: notification types (notify_msg.type)
NOTIFY_DROP = 1
NOTIFY_DEBUG = 2
NOTIFY_CAPTURE = 3
NOTIFY_TRACE = 4
# bpf_src/lib/common.h: trace observation points (notify_msg.subtype of NOTIFY_TRACE)
TRACE_TO_LXC = 0
TRACE_TO_PROXY = 1
TRACE_TO_HOST = 2
TRACE_TO_STACK = 3
TRACE_TO_OVERLAY = 4
TRACE_FROM_LXC = 5
TRACE_OBS_POINTS = {TRACE_TO_LXC: "to-endpoint", TRACE_TO_PROXY: "to-proxy",
                    TRACE_TO_HOST: "to-host", TRACE_TO_STACK: "to-stack",
                    TRACE_TO_OVERLAY: "to-overlay", TRACE_FROM_LXC: "from-endpoint"}


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
    ]


@dataclass
class DatapathEvent:
    cpu: int
    type: int               # NOTIFY_DROP / NOTIFY_TRACE
    subtype: int            # drop reason / trace observation point
    source: int             # lxc_id
    hash: int
    len_orig: int
    len_cap: int
    src_label: int
    dst_label: int
    dst_id: int
    ifindex: int
    data: bytes             # first len_cap bytes of the packet (Ethernet frame)

    @property
    def reason(self) -> str:
        return DROP_REASONS.get(self.subtype, str(self.subtype))


_SAMPLE_CB = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p,
                              ctypes.c_uint32)
_LOST_CB = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int, ctypes.c_uint64)


class EventReader:
    """Reads cilium_events (drop / trace notifications) through libbpf's
    perf_buffer. Creating a reader installs ITS per-CPU ring fds into the map,
    so exactly one reader should exist at a time. ``fileno()`` is an epoll fd usable with
    ``loop.add_reader``; call :meth:`consume` / :meth:`poll` to get events."""

    def __init__(self, events_fd: int, page_cnt: int = 64):
        self.events: list[DatapathEvent] = []
        self.lost = 0
        self._sample = _SAMPLE_CB(self._on_sample)
        self._lost = _LOST_CB(self._on_lost)
        pb = libbpf().perf_buffer__new(events_fd, page_cnt, self._sample, self._lost, None, None)
        if not pb:
            check(-ctypes.get_errno() or -errno.EINVAL, "perf_buffer__new")
        self._pb = pb

    def _on_sample(self, _ctx, cpu, data, size):
        raw = ctypes.string_at(data, size)
        hdr_len = ctypes.sizeof(notify_msg)
        if size < hdr_len:
            return
        h = notify_msg.from_buffer_copy(raw[:hdr_len])
        self.events.append(DatapathEvent(cpu, h.type, h.subtype, h.source, h.hash, h.len_orig,
                                         h.len_cap, h.src_label, h.dst_label, h.dst_id,
                                         h.ifindex, raw[hdr_len:hdr_len + h.len_cap]))

    def _on_lost(self, _ctx, _cpu, cnt):
        self.lost += cnt

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
