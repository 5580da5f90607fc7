"""cilium_events on the agent's event loop: the perf buffer's epoll fd is
watched with ``loop.add_reader``; when it is readable the rings are drained
with a non-blocking ``perf_buffer__consume`` and every record is decoded and
published. Nothing here waits on the kernel or on a subscriber.

Losses the kernel reports (a per-CPU ring overflowed before we read it) are
published as ``lost`` records with their CPU, as Cilium prints them.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any, Callable

import structlog

from docker_cilium.datapath.maps.eventsmap import EventReader
from docker_cilium.monitor.events import LabelLookup, decode, now_rfc3339
from docker_cilium.monitor.hub import MonitorHub

log = structlog.get_logger(__name__)

PAGE_CNT = 64  # per CPU, as Cilium's default (64 x 4096 bytes of shared memory)


class LabelCache:
    """Identity number -> label strings for the events' ``srcLabels`` /
    ``dstLabels``: a snapshot refreshed at most every ``ttl`` seconds, so a
    flood of events costs no identity lookups."""

    def __init__(self, snapshot: Callable[[], Any], ttl: float = 1.0) -> None:
        self._snapshot = snapshot
        self._ttl = ttl
        self._map: Any = {}
        self._at = 0.0

    def __call__(self, num: int) -> list[str] | None:
        now = time.monotonic()
        if now - self._at > self._ttl:
            self._map, self._at = self._snapshot(), now
        try:
            return list(self._map[num])
        except KeyError:
            return None


class DatapathMonitor:
    """Attaches a perf buffer reader to the loop while the hub has subscribers."""

    def __init__(self, events_fd: Callable[[], int], hub: MonitorHub, labels: LabelLookup | None = None,
                 page_cnt: int = PAGE_CNT) -> None:
        self._events_fd = events_fd
        self.hub = hub
        self.labels = labels
        self.page_cnt = page_cnt
        self.reader: EventReader | None = None
        self._lost: list[tuple[int, int]] = []  # (cpu, count) since the last drain
        self._loop: asyncio.AbstractEventLoop | None = None
        self.batches = 0
        hub.on_first, hub.on_last = self.start, self.stop

    def start(self) -> None:
        if self.reader is not None:
            return
        self._loop = asyncio.get_running_loop()
        self.reader = EventReader(self._events_fd(), self.page_cnt,
                                  on_lost=lambda cpu, cnt: self._lost.append((cpu, cnt)))
        self._loop.add_reader(self.reader.fileno(), self._on_readable)
        log.info("monitor.reader_attached", cpus=self.cpus, pages=self.page_cnt)

    def stop(self) -> None:
        if self.reader is None:
            return
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self.reader.fileno())
        self.reader.close()  # the hub's last subscriber left: what is still in the rings has no reader
        self.reader = None
        log.info("monitor.reader_detached")

    def _on_readable(self) -> None:
        reader = self.reader
        if reader is None:
            return
        try:
            events = reader.consume()
        except Exception:
            log.exception("monitor.consume_failed")
            return
        self.batches += 1
        lost, self._lost = self._lost, []
        for cpu, cnt in lost:
            self.hub.ring_lost(cpu, cnt)
        if not events:
            return
        stamp = now_rfc3339()
        for ev in events:
            try:
                self.hub.publish(decode(ev, stamp, self.labels))
            except Exception:  # a malformed record must not stop the stream
                log.exception("monitor.decode_failed", type=ev.type)

    @property
    def cpus(self) -> int:
        return os.cpu_count() or 1

    def status(self) -> dict[str, Any]:
        """Cilium's MonitorStatus (``nodeMonitor`` in /v1/healthz) plus who listens."""
        return {**self.hub.status(), "cpus": self.cpus, "npages": self.page_cnt,
                "pagesize": os.sysconf("SC_PAGE_SIZE"), "listening": self.reader is not None}
