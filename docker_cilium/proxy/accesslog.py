"""L7 access-log records (Cilium's ``LogRecord``) into the monitor hub, and
the L7 metrics, for every request the proxy sees.

A record is a monitor event of type ``l7``: ``l7Type`` Request (the verdict:
Forwarded, Denied, Error) or Response (the upstream's status code), the
direction as ``observationPoint`` (Ingress/Egress), both sides' endpoint IDs
(``source``/``dstID``, 0 = not local), identities and labels, and ``http``
(method, url, protocol, code). ``cilium monitor --type l7`` renders them as
Cilium's ``LogRecordNotify.DumpInfo`` does (``monitor/format.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from docker_cilium.monitor.events import now_rfc3339
from docker_cilium.proxy.peers import Peer
from docker_cilium.proxy.rules import RequestInfo

FORWARDED, DENIED, ERROR = "Forwarded", "Denied", "Error"  # Cilium's accesslog verdicts
REQUEST, RESPONSE = "Request", "Response"
# cilium_policy_l7_total{rule=...}
RECEIVED, PARSE_ERRORS = "received", "parse_errors"
RULE_OF_VERDICT = {FORWARDED: "forwarded", DENIED: "denied"}


class EventSink(Protocol):
    """``monitor.hub.MonitorHub.publish``: never blocks."""

    def publish(self, event: dict[str, Any]) -> None: ...


class ProxyMetrics(Protocol):
    """What the proxy records (``metrics.registry.AgentMetrics``)."""

    def l7_request(self, rule: str) -> None: ...
    def proxy_upstream_reply(self, seconds: float, error: str) -> None: ...
    def proxy_redirects(self, count: int) -> None: ...


class NoMetrics:
    def l7_request(self, rule: str) -> None:
        return None

    def proxy_upstream_reply(self, seconds: float, error: str) -> None:
        return None

    def proxy_redirects(self, count: int) -> None:
        return None


@dataclass(frozen=True)
class Flow:
    """One proxied connection as the log names it: the client (source) and
    the original destination, with the redirect's direction."""

    direction: str          # "ingress" | "egress"
    source: Peer
    destination: Peer
    source_addr: str        # "ip:port" / "[ip]:port"
    destination_addr: str


def _url(req: RequestInfo) -> str:
    return f"http://{req.host}{req.path}"


class AccessLog:
    def __init__(self, events: EventSink | None, metrics: ProxyMetrics | None = None) -> None:
        self.events = events
        self.metrics: ProxyMetrics = metrics or NoMetrics()

    def _record(self, kind: str, flow: Flow, verdict: str, req: RequestInfo | None, code: int,
                version: str) -> None:
        if self.events is None:
            return
        ev: dict[str, Any] = {
            "type": "l7", "time": now_rfc3339(), "l7Type": kind, "verdict": verdict,
            "observationPoint": flow.direction.capitalize(), "l7Proto": "http",
            "source": flow.source.endpoint_id, "dstID": flow.destination.endpoint_id,
            "srcLabel": flow.source.identity, "dstLabel": flow.destination.identity,
            "srcLabels": list(flow.source.labels), "dstLabels": list(flow.destination.labels),
            "sourceAddr": flow.source_addr, "destinationAddr": flow.destination_addr,
            "http": {"code": code, "method": req.method if req else "", "url": _url(req) if req else "",
                     "protocol": f"HTTP/{version}"},
        }
        self.events.publish(ev)

    def received(self) -> None:
        self.metrics.l7_request(RECEIVED)

    def request(self, flow: Flow, req: RequestInfo, verdict: str, code: int, version: str) -> None:
        """A request's verdict (``code`` 0 when forwarded: the answer is the upstream's)."""
        if verdict in RULE_OF_VERDICT:
            self.metrics.l7_request(RULE_OF_VERDICT[verdict])
        self._record(REQUEST, flow, verdict, req, code, version)

    def response(self, flow: Flow, req: RequestInfo, code: int, version: str, seconds: float | None,
                 error: str = "") -> None:
        """The answer the client got for a forwarded request (the upstream's, or
        the proxy's 502/503/504 when the upstream failed: verdict Error)."""
        if seconds is not None:
            self.metrics.proxy_upstream_reply(seconds, error)
        self._record(RESPONSE, flow, ERROR if error else FORWARDED, req, code, version)

    def parse_error(self, flow: Flow) -> None:
        self.metrics.l7_request(PARSE_ERRORS)
        self._record(REQUEST, flow, ERROR, None, 400, "1.1")
