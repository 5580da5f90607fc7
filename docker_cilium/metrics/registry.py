"""The agent's metrics: one CollectorRegistry of its own, Cilium's names.

Event counters are recorded on the loop as things happen (cheap: a lock and
an add). A scrape first snapshots the agent's state on the loop, then renders
the exposition in a worker thread, where the datapath collector walks the
per-CPU BPF map: a slow map read never stalls the agent.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.exposition import choose_encoder

from docker_cilium.metrics.datapath import CounterReader, DatapathCollector
from docker_cilium.metrics.state import AgentState, AgentStateCollector

SUCCESS, FAIL = "success", "fail"  # Cilium's outcome label values


class AgentMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.api_time = Histogram(
            "cilium_agent_api_process_time_seconds",
            "Duration of processed API calls labeled by path, method and return code.",
            ["path", "method", "return_code"], registry=r)
        self.regeneration_time = Histogram(
            "cilium_endpoint_regeneration_time_stats_seconds", "Endpoint regeneration time stats labeled by the scope",
            ["scope", "status"], registry=r)
        self.regenerations = Counter(
            "cilium_endpoint_regenerations_total",
            "Count of all endpoint regenerations that have completed, tagged by outcome", ["outcome"], registry=r)
        self.policy_import_errors = Counter(
            "cilium_policy_import_errors_total", "Number of times a policy import has failed", registry=r)
        self.kvstore_time = Histogram(
            "cilium_kvstore_operations_duration_seconds", "Duration in seconds of kvstore operations",
            ["action", "kind", "outcome", "scope"], registry=r)
        self.policy_l7 = Counter(
            "cilium_policy_l7_total", "Number of total proxy requests handled", ["rule"], registry=r)
        self.proxy_redirects_gauge = Gauge(
            "cilium_proxy_redirects", "Number of redirects installed for endpoints, labeled by protocol",
            ["protocol_l7"], registry=r)
        self.proxy_upstream_time = Histogram(
            "cilium_proxy_upstream_reply_seconds", "Seconds waited for upstream server to reply to a request",
            ["error", "protocol_l7", "scope"], registry=r)
        self.state = AgentStateCollector()
        self.datapath = DatapathCollector()
        r.register(self.state)
        r.register(self.datapath)
        ProcessCollector(namespace="cilium", registry=r)
        self._state_source: Callable[[], AgentState] | None = None

    # --- wiring -----------------------------------------------------------------
    def set_state_source(self, source: Callable[[], AgentState]) -> None:
        """``source`` is called on the loop at each scrape (see state.agent_state)."""
        self._state_source = source

    def set_datapath_reader(self, read: CounterReader | None) -> None:
        """``read`` is called in a worker thread at each scrape (the BPF map walk)."""
        self.datapath.read = read

    # --- events (on the loop) ---------------------------------------------------------
    def api_call(self, path: str, method: str, status: int, seconds: float) -> None:
        self.api_time.labels(path, method, str(status)).observe(seconds)

    def endpoint_regenerated(self, seconds: float, ok: bool) -> None:
        outcome = SUCCESS if ok else FAIL
        self.regenerations.labels(outcome).inc()
        self.regeneration_time.labels("total", "success" if ok else "failure").observe(seconds)

    def policy_import_failed(self) -> None:
        self.policy_import_errors.inc()

    def kvstore_operation(self, action: str, kind: str, scope: str, ok: bool, seconds: float) -> None:
        self.kvstore_time.labels(action, kind, SUCCESS if ok else FAIL, scope).observe(seconds)

    # proxy.accesslog.ProxyMetrics
    def l7_request(self, rule: str) -> None:
        self.policy_l7.labels(rule).inc()

    def proxy_upstream_reply(self, seconds: float, error: str) -> None:
        self.proxy_upstream_time.labels(error, "http", "total").observe(seconds)

    def proxy_redirects(self, count: int) -> None:
        self.proxy_redirects_gauge.labels("http").set(count)

    # --- reading ------------------------------------------------------------------------
    def refresh(self) -> None:
        """Snapshot the agent's state (on the loop) for the next collection."""
        if self._state_source is not None:
            self.state.update(self._state_source())

    async def exposition(self, accept: str = "") -> tuple[bytes, str]:
        """The text a scrape gets (Prometheus or OpenMetrics, per ``accept``), and its content type."""
        self.refresh()
        encoder, content_type = choose_encoder(accept)
        return await asyncio.to_thread(encoder, self.registry), content_type

    async def dump(self) -> list[dict[str, Any]]:
        """Cilium's ``GET /v1/metrics/`` list: one ``{name, labels, value}`` per
        series; a histogram's value is its sum, as Cilium's DumpMetrics gives."""
        self.refresh()
        families = await asyncio.to_thread(lambda: list(self.registry.collect()))
        out: list[dict[str, Any]] = []
        for fam in families:
            for s in fam.samples:
                if fam.type == "counter":
                    keep = s.name.endswith("_total")
                elif fam.type in ("histogram", "summary"):
                    keep = s.name == fam.name + "_sum"
                else:
                    keep = s.name == fam.name
                if keep:
                    name = s.name if fam.type == "counter" else fam.name
                    out.append({"name": name, "labels": dict(s.labels), "value": s.value})
        return out
