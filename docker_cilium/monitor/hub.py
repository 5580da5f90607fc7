"""Fan-out of monitor events to any number of subscribers.

Publishing never waits: each subscriber has its own bounded queue, and when a
subscriber falls behind (a `cilium monitor` that stopped reading, a slow
terminal) its queue drops the OLDEST events and counts them. The count
reaches that subscriber as a ``lost`` record ahead of the events that follow,
so nothing is lost silently and no subscriber can slow the agent or another
subscriber.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

import structlog

from docker_cilium.monitor.events import LOST, agent_event, endpoints_of, lost_event

log = structlog.get_logger(__name__)

DEFAULT_QUEUE = 4096


class Item:
    """A published event, serialised once however many subscribers stream it."""

    __slots__ = ("event", "_line")

    def __init__(self, event: dict[str, Any]) -> None:
        self.event = event
        self._line: bytes | None = None

    @property
    def line(self) -> bytes:
        if self._line is None:
            self._line = json.dumps(self.event, separators=(",", ":")).encode() + b"\n"
        return self._line


@dataclass(frozen=True)
class Filter:
    """Cilium's monitor filters: event type names, and endpoint IDs the event
    comes from, goes to, or either. Empty means "any". Lost records always pass:
    a filtered stream still has to say that events went missing."""

    types: frozenset[str] = frozenset()
    from_: frozenset[int] = frozenset()
    to: frozenset[int] = frozenset()
    related: frozenset[int] = frozenset()

    def match(self, event: dict[str, Any]) -> bool:
        if event["type"] == LOST:
            return True
        if self.types and event["type"] not in self.types:
            return False
        if not (self.from_ or self.to or self.related):
            return True
        src, dst = endpoints_of(event)
        if self.from_ and src not in self.from_:
            return False
        if self.to and dst not in self.to:
            return False
        return not self.related or src in self.related or dst in self.related


class Subscription:
    """One subscriber's queue. :meth:`get` waits for the next batch."""

    def __init__(self, hub: "MonitorHub", flt: Filter, maxlen: int) -> None:
        self.hub = hub
        self.filter = flt
        self.queue: deque[Item] = deque()
        self.maxlen = maxlen
        self.dropped = 0          # not yet reported to the subscriber
        self.dropped_total = 0
        self.delivered = 0
        self._wake = asyncio.Event()
        self._ended = asyncio.Event()
        self.closed = False

    def put(self, item: Item) -> None:
        if not self.filter.match(item.event):
            return
        if len(self.queue) >= self.maxlen:
            self.queue.popleft()
            self.dropped += 1
            self.dropped_total += 1
        self.queue.append(item)
        self._wake.set()

    async def get(self) -> list[Item]:
        """Everything queued (at least one item), preceded by a ``lost``
        record when the queue had to drop events since the last call; an empty
        list once the subscription is closed (the agent is stopping)."""
        while not self.queue:
            if self.closed:
                return []
            self._wake.clear()
            await self._wake.wait()
        batch: list[Item] = []
        if self.dropped:
            batch.append(Item(lost_event(self.dropped, where="queue")))
            self.dropped = 0
        batch.extend(self.queue)
        self.queue.clear()
        self.delivered += len(batch)
        return batch

    async def wait_closed(self) -> None:
        """Return once :meth:`close` ran (the agent is stopping, or the stream ended)."""
        await self._ended.wait()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._wake.set()
            self._ended.set()
            self.hub._unsubscribe(self)

    def __enter__(self) -> "Subscription":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class HubStats:
    events: int = 0                       # published (after decoding)
    ring_lost: int = 0                    # perf ring overflows, all CPUs
    by_type: dict[str, int] = field(default_factory=dict)


class MonitorHub:
    """Where datapath and agent events meet their subscribers.

    ``on_first`` / ``on_last`` run when the first subscriber arrives and the
    last one leaves: the datapath reader is attached only while someone listens,
    as Cilium's monitor agent does (no reader: the datapath's perf output is a
    no-op, no events are decoded)."""

    def __init__(self, queue_len: int = DEFAULT_QUEUE) -> None:
        self.queue_len = queue_len
        self.subscribers: list[Subscription] = []
        self.stats = HubStats()
        self.on_first: Callable[[], None] | None = None
        self.on_last: Callable[[], None] | None = None

    def subscribe(self, flt: Filter | None = None, queue_len: int | None = None) -> Subscription:
        sub = Subscription(self, flt or Filter(), queue_len or self.queue_len)
        self.subscribers.append(sub)
        if len(self.subscribers) == 1 and self.on_first is not None:
            try:
                self.on_first()
            except Exception:
                self.subscribers.remove(sub)
                raise
        return sub

    def _unsubscribe(self, sub: Subscription) -> None:
        if sub in self.subscribers:
            self.subscribers.remove(sub)
            if sub.dropped_total:
                log.info("monitor.subscriber_lost_events", dropped=sub.dropped_total, delivered=sub.delivered)
            if not self.subscribers and self.on_last is not None:
                self.on_last()

    def publish(self, event: dict[str, Any]) -> None:
        """Queue ``event`` for every subscriber whose filter matches; never waits."""
        self.stats.events += 1
        self.stats.by_type[event["type"]] = self.stats.by_type.get(event["type"], 0) + 1
        if not self.subscribers:
            return
        item = Item(event)
        for sub in self.subscribers:
            sub.put(item)

    def status(self) -> dict[str, Any]:
        """Cilium's MonitorStatus with no datapath reader (see DatapathMonitor.status)."""
        return {"cpus": 0, "npages": 0, "pagesize": 0, "lost": self.stats.ring_lost, "unknown": 0,
                "listening": False, "subscribers": len(self.subscribers), "events": self.stats.events}

    def close(self) -> None:
        """End every subscription (streams finish: the agent can stop at once)."""
        for sub in list(self.subscribers):
            sub.close()

    def ring_lost(self, cpu: int, count: int) -> None:
        self.stats.ring_lost += count
        self.publish(lost_event(count, cpu=cpu, where="ring"))

    # AgentNotifier: what the endpoint, policy and identity code call.
    def agent_event(self, subtype: str, message: dict[str, Any]) -> None:
        self.publish(agent_event(subtype, message))
