"""Cilium's `cilium monitor` text from the event dicts of GET /v1/monitor:
one summary line per event (the default), or Cilium's verbose form (-v) with
the decoded headers or a hex dump (--hex) under it."""

from __future__ import annotations

import json
import socket
from typing import Any

from docker_cilium.monitor.dissect import hexdump, layers_text

SEPARATOR = "-" * 78


def ifname(index: int) -> str:
    """The interface name (the CLI runs on the agent's host), else the number."""
    try:
        return socket.if_indextoname(index)
    except OSError:
        return str(index)


def _identity(e: dict[str, Any]) -> str:
    return f"identity {e.get('srcLabel', 0)}->{e.get('dstLabel', 0)}"


def _summary(e: dict[str, Any]) -> str:
    return e.get("summaryText", "[unknown]")


def start_line(status: dict[str, Any]) -> str:
    return (f"Listening for events on {status.get('cpus', 0)} CPUs with "
            f"{status.get('npages', 0)}x{status.get('pagesize', 0)} of shared memory")


def node_monitor(status: dict[str, Any]) -> str:
    """The NodeMonitor line of `cilium status`: the ring while a monitor is attached."""
    if status.get("listening"):
        text = start_line(status) + f", {status.get('subscribers', 0)} monitor(s) attached"
    else:
        text = "Idle: no monitor attached (the event rings are read only while one is)"
    return text + (f", {status['lost']} events lost" if status.get("lost") else "")


def info(e: dict[str, Any]) -> str:
    """The one-line summary (Cilium's DumpInfo)."""
    t = e["type"]
    if t == "drop":
        return (f"xx drop ({e['reason']}) flow {e['mark']} to endpoint {e['dstID']}, ifindex {e['ifindex']}, "
                f"{_identity(e)}: {_summary(e)}")
    if t == "trace":
        return (f"{e['traceSummary']} flow {e['mark']} {_identity(e)} state {e['state']} "
                f"ifindex {ifname(e['ifindex'])}: {_summary(e)}")
    if t == "policy-verdict":
        return (f"Policy verdict log: flow {e['mark']} local EP ID {e['source']}, remote ID {e['remoteLabel']}, "
                f"proto {e['proto']}, {e['direction']}, action {e['action']}, match {e['match']}, {_summary(e)}")
    if t == "debug":
        return f"CPU {e['cpu']:02d}: MARK {e['mark']} FROM {e['source']} DEBUG: {e['message']}"
    if t == "agent":
        return f">> {e['subtype']}: {json.dumps(e['message'], separators=(',', ':'))}"
    if t == "l7":
        return l7(e)
    if t == "lost":
        return lost(e)
    return f"CPU {e.get('cpu', 0):02d}: Unknown event: {json.dumps(e)}"


def _endpoint(num: int, labels: list[str]) -> str:
    return f"{num} ([{' '.join(labels)}])"


def l7(e: dict[str, Any]) -> str:
    """Cilium's LogRecordNotify.DumpInfo: ``<- Request http from 11 ([labels]) to
    22 ([labels]), identity 1001->1002, verdict Forwarded GET http://app1/public => 0``
    (a Response is ``-> Response http to <source> from <destination>``)."""
    src = _endpoint(e.get("source", 0), e.get("srcLabels", []))
    dst = _endpoint(e.get("dstID", 0), e.get("dstLabels", []))
    request = e.get("l7Type") == "Request"
    sides = f"from {src} to {dst}" if request else f"to {src} from {dst}"
    http = e.get("http") or {}
    return (f"{'<-' if request else '->'} {e.get('l7Type')} {e.get('l7Proto', 'http')} {sides}, "
            f"identity {e.get('srcLabel', 0)}->{e.get('dstLabel', 0)}, verdict {e.get('verdict')} "
            f"{http.get('method', '')} {http.get('url', '')} => {http.get('code', 0)}")


def lost(e: dict[str, Any]) -> str:
    if e.get("where") == "queue":
        return f"Monitor queue: {e['lost']} events lost (this monitor fell behind; the oldest were dropped)"
    return f"CPU {e.get('cpu', 0):02d}: {e['lost']} events lost"


def verbose(e: dict[str, Any], hex_: bool) -> list[str]:
    """Cilium's DumpVerbose: a separator, the event's header line, then the
    packet's decoded layers, or its bytes in hex with ``--hex``."""
    t = e["type"]
    if t not in ("drop", "trace", "policy-verdict"):
        return [info(e)]
    head = f"CPU {e['cpu']:02d}: MARK {e['mark']} FROM {e['source']} "
    if t == "drop":
        head += f"DROP: {e['bytes']} bytes, reason {e['reason']}"
    elif t == "trace":
        head += f"{e['observationPoint']}: {e['bytes']} bytes, state {e['state']}"
        if e.get("ifindex"):
            head += f", interface {ifname(e['ifindex'])}"
    else:
        head += (f"POLICY-VERDICT: {e['bytes']} bytes, {e['direction']}, action {e['action']}, "
                 f"match {e['match']}")
    if e.get("srcLabel") or e.get("dstLabel"):
        head += ", " + _identity(e)
    for key, side in (("srcLabels", "source"), ("dstLabels", "destination")):
        if e.get(key):
            head += f", {side} labels {' '.join(e[key])}"
    if e.get("dstID"):
        head += f", to endpoint {e['dstID']}"
    body = hexdump(bytes.fromhex(e.get("data", ""))) if hex_ else layers_text(e.get("summary", {}))
    return [SEPARATOR, head, *body]


def render(e: dict[str, Any], verbosity: int, hex_: bool) -> list[str]:
    """Lines to print for one event at this verbosity."""
    if verbosity:
        return verbose(e, hex_)
    lines = [info(e)]
    if hex_ and e.get("data"):
        lines += hexdump(bytes.fromhex(e["data"]))
    return lines
