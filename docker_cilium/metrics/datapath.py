"""Drops and forwards by reason and direction, from the datapath's per-CPU
``cilium_metrics`` map, read at scrape time (Cilium's metricsmap collector).

Reading is a map walk with one syscall per key: :meth:`collect` must run off
the event loop (the exposition is rendered in a worker thread).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Iterator

from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from docker_cilium.datapath.drop import DROP_REASONS, REASON_FORWARDED
from docker_cilium.datapath.maps.metricsmap import METRIC_EGRESS, METRIC_INGRESS

if TYPE_CHECKING:
    from prometheus_client import Metric

#: (reason, direction) -> (packets, bytes), summed over CPUs.
Counters = dict[tuple[int, int], tuple[int, int]]
CounterReader = Callable[[], Counters]

DIRECTIONS = {METRIC_INGRESS: "INGRESS", METRIC_EGRESS: "EGRESS"}


def direction_name(direction: int) -> str:
    """Cilium's ``direction`` label (metricsmap.MetricDirection)."""
    return DIRECTIONS.get(direction, "UNKNOWN")


def reason_name(reason: int) -> str:
    """Cilium's ``reason`` label: the drop reason's text, its number if unknown."""
    return DROP_REASONS.get(reason, str(reason))


class DatapathCollector(Collector):
    """cilium_drop_count_total / cilium_drop_bytes_total {reason, direction} and
    cilium_forward_count_total / cilium_forward_bytes_total {direction}."""

    def __init__(self, read: CounterReader | None = None) -> None:
        self.read = read

    def collect(self) -> Iterator[Metric]:
        if self.read is None:  # no datapath (yet): no series rather than zeros that would lie
            return
        counters = self.read()
        drops = CounterMetricFamily("cilium_drop_count_total",
                                    "Total dropped packets, tagged by drop reason and ingress/egress direction",
                                    labels=["reason", "direction"])
        drop_bytes = CounterMetricFamily("cilium_drop_bytes_total",
                                         "Total dropped bytes, tagged by drop reason and ingress/egress direction",
                                         labels=["reason", "direction"])
        fwd = CounterMetricFamily("cilium_forward_count_total",
                                  "Total forwarded packets, tagged by ingress/egress direction", labels=["direction"])
        fwd_bytes = CounterMetricFamily("cilium_forward_bytes_total",
                                        "Total forwarded bytes, tagged by ingress/egress direction",
                                        labels=["direction"])
        # Summed by label set: two unknown directions share the label UNKNOWN.
        dropped: dict[tuple[str, str], list[int]] = {}
        forwarded: dict[str, list[int]] = {}
        for (reason, direction), (packets, nbytes) in counters.items():
            if reason == REASON_FORWARDED:
                acc = forwarded.setdefault(direction_name(direction), [0, 0])
            else:
                acc = dropped.setdefault((reason_name(reason), direction_name(direction)), [0, 0])
            acc[0] += packets
            acc[1] += nbytes
        for labels, (packets, nbytes) in sorted(dropped.items()):
            drops.add_metric(list(labels), packets)
            drop_bytes.add_metric(list(labels), nbytes)
        for name, (packets, nbytes) in sorted(forwarded.items()):
            fwd.add_metric([name], packets)
            fwd_bytes.add_metric([name], nbytes)
        yield from (drops, drop_bytes, fwd, fwd_bytes)
