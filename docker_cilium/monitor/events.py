"""Monitor events as JSON-ready dicts: the one shape the agent streams on
``GET /v1/monitor``, ``cilium monitor -j`` prints and a flow view can serve
as is.

Every event has ``type`` (Cilium's message type name), ``time`` (RFC 3339,
UTC) and, for datapath events, ``cpu``. Datapath events keep the field names
of Cilium's ``monitor -j`` output (``mark``, ``source``, ``bytes``,
``srcLabel``, ``dstLabel``, ``dstID``, ``summary`` with l2/l3/l4 src/dst) and
add what a flow row needs without a second lookup: ``verdict`` (Hubble's
FORWARDED / DROPPED / ALLOWED / DENIED), the identities' labels and the
connection summary text.
"""

from __future__ import annotations

import datetime
from typing import Any, Callable

from docker_cilium.datapath.drop import DROP_REASONS
from docker_cilium.datapath.maps import eventsmap as em
from docker_cilium.monitor.dissect import connection_summary, dissect
from docker_cilium.monitor.notify import *  # noqa: F401,F403  (the AGENT_* subtypes)

# Cilium's message type names (pkg/monitor/api), as the ?type= filter takes them.
TYPES_BY_NAME = {name: num for num, name in em.NOTIFY_TYPES.items()}
L7 = "l7"  # the proxy's access-log records (proxy/accesslog.py), not from the datapath
TYPES_BY_NAME[L7] = 129  # Cilium's MessageTypeAccessLog
LOST = "lost"  # not a message type: the record of events that never arrived

LabelLookup = Callable[[int], "list[str] | None"]


def now_rfc3339(ts: float | None = None) -> str:
    t = datetime.datetime.now(datetime.timezone.utc) if ts is None else \
        datetime.datetime.fromtimestamp(ts, datetime.timezone.utc)
    return t.isoformat().replace("+00:00", "Z")


def _obs_point(n: int) -> str:
    return em.TRACE_OBS_POINTS.get(n, str(n))


def _trace_summary(ev: em.DatapathEvent) -> str:
    """Cilium's traceSummary: where the packet went, by observation point."""
    return {em.TRACE_TO_LXC: f"-> endpoint {ev.dst_id}", em.TRACE_TO_PROXY: "-> proxy",
            em.TRACE_TO_HOST: "-> host from", em.TRACE_TO_STACK: "-> stack",
            em.TRACE_TO_OVERLAY: "-> overlay", em.TRACE_FROM_LXC: f"<- endpoint {ev.source}",
            em.TRACE_FROM_OVERLAY: "<- overlay"}.get(
        ev.subtype, "unknown trace")


def decode(ev: em.DatapathEvent, time: str, labels: LabelLookup | None = None) -> dict[str, Any]:
    """One :class:`~docker_cilium.datapath.maps.eventsmap.DatapathEvent` as a dict."""
    summary = dissect(ev.data)
    out: dict[str, Any] = {
        "type": ev.type_name, "time": time, "cpu": ev.cpu,
        "mark": f"{ev.hash:#x}", "source": ev.source, "bytes": ev.len_orig,
        "srcLabel": ev.src_label, "dstLabel": ev.dst_label, "dstID": ev.dst_id, "ifindex": ev.ifindex,
    }
    if ev.type == em.NOTIFY_DROP:
        out.update(verdict="DROPPED", reason=ev.drop_reason, reasonCode=ev.subtype)
    elif ev.type == em.NOTIFY_TRACE:
        out.update(verdict="FORWARDED", observationPoint=_obs_point(ev.subtype), traceSummary=_trace_summary(ev),
                   state=em.TRACE_REASONS.get(ev.reason, str(ev.reason)))
    elif ev.type == em.NOTIFY_POLICY_VERDICT:
        _policy_verdict(ev, out)
    elif ev.type == em.NOTIFY_DEBUG:
        out.update(subtype=ev.subtype, arg1=ev.arg1, arg2=ev.arg2, arg3=ev.arg3, message=ev.message)
    if labels is not None:
        for key, num in (("srcLabels", ev.src_label), ("dstLabels", ev.dst_label)):
            found = labels(num) if num else None
            if found:
                out[key] = found
    if summary:
        out["summary"] = summary
        out["summaryText"] = connection_summary(summary)
    out["data"] = ev.data.hex()
    return out


def _policy_verdict(ev: em.DatapathEvent, out: dict[str, Any]) -> None:
    """Allow or deny of a new connection, the direction and what matched."""
    direction = ev.direction
    verdict = ev.verdict
    out.update(verdict="ALLOWED" if verdict == 0 else "DENIED", action="allow" if verdict == 0 else "deny",
               direction=em.DIRECTIONS.get(direction, str(direction)),
               match=em.POLICY_MATCH_TYPES.get(ev.match_type, "unknown"),
               remoteLabel=ev.src_label if direction == em.DIRECTION_INGRESS else ev.dst_label,
               dport=ev.dport, proto=ev.proto)
    if verdict:
        out["reason"] = DROP_REASONS.get(verdict, str(verdict))


def agent_event(subtype: str, message: dict[str, Any], time: str | None = None) -> dict[str, Any]:
    """Cilium's agent notification JSON: ``{"type":"agent","subtype":...,"message":{...}}``."""
    return {"type": "agent", "subtype": subtype, "message": message, "time": time or now_rfc3339()}


def lost_event(count: int, cpu: int | None = None, where: str = "ring") -> dict[str, Any]:
    """Events that never reached this subscriber: ``where`` is ``ring`` (the
    kernel's per-CPU perf ring overflowed before the agent read it) or
    ``queue`` (this subscriber's queue was full: the oldest were dropped)."""
    out: dict[str, Any] = {"type": LOST, "lost": count, "where": where, "time": now_rfc3339()}
    if cpu is not None:
        out["cpu"] = cpu
    return out


def endpoints_of(event: dict[str, Any]) -> tuple[int | None, int | None]:
    """(from, to) endpoint IDs an event is about, for --from/--to/--related-to;
    an agent event about an endpoint relates to that endpoint both ways."""
    if event["type"] == "agent":
        eid = event["message"].get("id") if event["subtype"].startswith(("Endpoint", "Failed endpoint")) else None
        return eid, eid
    return event.get("source"), event.get("dstID")
