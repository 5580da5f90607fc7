"""Monitor events from the real datapath with real packets: every event type
(trace, policy-verdict, debug; drops in test_datapath.py) and every
--monitor-aggregation level, read through the EventReader the agent uses."""

from __future__ import annotations

import struct
import subprocess
import time
from dataclasses import dataclass

import pytest

from docker_cilium.datapath.drop import DROP_POLICY, DROP_POLICY_DENY, DROP_POLICY_L4
from docker_cilium.datapath.maps import configmap as cfg
from docker_cilium.datapath.maps.eventsmap import (
    DBG_CT_CREATED4, DBG_CT_LOOKUP4_1, DBG_CT_VERDICT, DBG_LOCAL_DELIVERY, DBG_POLICY_DENIED,
    DIRECTION_EGRESS, DIRECTION_INGRESS, NOTIFY_DEBUG, NOTIFY_DROP, NOTIFY_POLICY_VERDICT,
    NOTIFY_TRACE, POLICY_MATCH_ALL, POLICY_MATCH_L3_L4, POLICY_MATCH_L3_ONLY, POLICY_MATCH_L4_ONLY,
    POLICY_MATCH_NONE, TRACE_FROM_LXC, TRACE_REASON_CT_ESTABLISHED, TRACE_REASON_CT_RELATED,
    TRACE_REASON_CT_REPLY, TRACE_REASON_POLICY, TRACE_TO_LXC, TRACE_TO_STACK, DatapathEvent)
from docker_cilium.datapath.maps.policymap import PolicyEntry
from docker_cilium.identity.reserved import HOST as IDENTITY_HOST

from tests.privileged.conftest import PYTHON

pytestmark = pytest.mark.privileged

OK, REFUSED = 0, 3
PORT = 8080
TCP_FIN, TCP_SYN, TCP_RST = 0x01, 0x02, 0x04


@dataclass
class Pkt:
    """The IPv4 header fields of an event's captured frame."""
    proto: int
    saddr: str
    daddr: str
    sport: int
    dport: int
    tcp_flags: int
    payload: int          # L4 payload bytes (TCP only)


def pkt(ev: DatapathEvent) -> Pkt | None:
    d = ev.data
    if len(d) < 34 or d[12:14] != b"\x08\x00":
        return None
    ihl = (d[14] & 0x0F) * 4
    total = struct.unpack("!H", d[16:18])[0]
    proto = d[23]
    l4 = 14 + ihl
    sport = dport = flags = payload = 0
    if proto in (6, 17) and len(d) >= l4 + 4:
        sport, dport = struct.unpack("!HH", d[l4:l4 + 4])
    if proto == 6 and len(d) >= l4 + 14:
        flags = d[l4 + 13]
        payload = total - ihl - (d[l4 + 12] >> 4) * 4
    return Pkt(proto, ".".join(map(str, d[26:30])), ".".join(map(str, d[30:34])), sport, dport,
               flags, payload)


def drain(reader, quiet_ms: int = 300) -> list[DatapathEvent]:
    """Every event until the ring stays empty for quiet_ms; none may be lost."""
    out: list[DatapathEvent] = []
    while True:
        got = reader.poll(quiet_ms)
        if not got:
            break
        out += got
    assert reader.lost == 0, f"{reader.lost} events lost: the counts below would be wrong"
    return out


def between(evs, x, y, type_=NOTIFY_TRACE):
    """Events of type_ whose packet goes between containers x and y (either way)."""
    ends = {x.ipv4, y.ipv4}
    return [e for e in evs if e.type == type_ and (p := pkt(e)) and {p.saddr, p.daddr} == ends]


def ct_packets(maps, x, y) -> int:
    """Packets (both directions) conntrack counted between x and y."""
    return sum(e.packets for e in maps.ct.dump() if {e.saddr, e.daddr} == {x.ipv4, y.ipv4})


@pytest.fixture
def reader(datapath):
    r = datapath.maps.event_reader(page_cnt=256)
    yield r
    r.close()


def test_aggregation_none_traces_every_packet_from_and_to_the_endpoint(topo, datapath, abc, reader):
    a, b, _ = abc
    datapath.maps.config.set_monitor_aggregation(cfg.MONITOR_AGGREGATION_NONE)
    topo.serve(b, PORT)
    drain(reader)
    assert topo.tcp(a, b.ipv4, PORT) == OK
    evs = between(drain(reader), a, b)
    n = ct_packets(datapath.maps, a, b)
    assert n >= 7, n          # SYN, SYN-ACK, ACK, data, reply, FINs...
    frm = [e for e in evs if e.subtype == TRACE_FROM_LXC]
    to = [e for e in evs if e.subtype == TRACE_TO_LXC]
    assert len(frm) == n and len(to) == n, (len(frm), len(to), n)
    syn = [e for e in to if pkt(e).tcp_flags & TCP_SYN and not pkt(e).tcp_flags & 0x10]
    assert len(syn) == 1
    s = syn[0]
    assert (s.reason, s.source, s.src_label, s.dst_label, s.dst_id) == \
        (TRACE_REASON_POLICY, a.lxc_id, a.identity, b.identity, b.lxc_id)
    assert {e.reason for e in to if pkt(e).saddr == b.ipv4} == {TRACE_REASON_CT_REPLY}
    assert TRACE_REASON_CT_ESTABLISHED in {e.reason for e in to if pkt(e).saddr == a.ipv4}
    assert {e.source for e in frm if pkt(e).saddr == b.ipv4} == {b.lxc_id}


@pytest.mark.parametrize("level", [cfg.MONITOR_AGGREGATION_LOWEST, cfg.MONITOR_AGGREGATION_LOW])
def test_aggregation_low_hides_receive_side_only(topo, datapath, abc, reader, level):
    a, b, _ = abc
    datapath.maps.config.set_monitor_aggregation(level)
    topo.serve(b, PORT)
    drain(reader)
    assert topo.tcp(a, b.ipv4, PORT) == OK
    evs = between(drain(reader), a, b)
    n = ct_packets(datapath.maps, a, b)
    assert not [e for e in evs if e.subtype == TRACE_FROM_LXC]
    assert len([e for e in evs if e.subtype == TRACE_TO_LXC]) == n >= 7


def sink_transfer(topo, src, dst, mbytes: int) -> None:
    topo.serve(dst, PORT + 1, mode="sink")
    code, _gbps = topo.bulk(src, dst.ipv4, PORT + 1, mbytes)
    assert code == OK


def test_aggregation_medium_traces_new_connections_and_state_changes_only(topo, datapath, abc, reader):
    a, b, _ = abc
    maps = datapath.maps
    maps.config.set_monitor_aggregation(cfg.MONITOR_AGGREGATION_MEDIUM)
    drain(reader)
    sink_transfer(topo, a, b, 8)
    evs = between(drain(reader), a, b)
    n = ct_packets(maps, a, b)
    assert n > 60, n                     # the transfer really was many packets
    assert not [e for e in evs if e.subtype == TRACE_FROM_LXC]
    assert 3 <= len(evs) <= 8, [(e.reason, pkt(e)) for e in evs]
    first = evs[0]
    assert (first.reason, pkt(first).tcp_flags & TCP_SYN) == (TRACE_REASON_POLICY, TCP_SYN)
    assert [e.reason for e in evs].count(TRACE_REASON_POLICY) == 1
    # the first reply (SYN-ACK) and each side's FIN are state changes
    assert any(e.reason == TRACE_REASON_CT_REPLY and pkt(e).tcp_flags & TCP_SYN for e in evs)
    fins = [e for e in evs if pkt(e).tcp_flags & TCP_FIN]
    assert {pkt(e).saddr for e in fins} == {a.ipv4, b.ipv4}
    # established data packets in between are not traced
    assert not [e for e in evs if pkt(e).payload and not pkt(e).tcp_flags & (TCP_FIN | TCP_SYN)]


def icmp_traces(evs):
    return [(e.subtype, e.reason, e.source, e.src_label, e.dst_label, e.dst_id)
            for e in evs if e.type == NOTIFY_TRACE and pkt(e) and pkt(e).proto == 1]


def test_medium_traces_to_stack_reply_and_related(topo, datapath, abc, reader):
    a, b, _ = abc
    datapath.maps.config.set_monitor_aggregation(cfg.MONITOR_AGGREGATION_MEDIUM)
    drain(reader)
    assert topo.ping(a, topo.router4)
    assert icmp_traces(drain(reader)) == [
        (TRACE_TO_STACK, TRACE_REASON_POLICY, a.lxc_id, a.identity, IDENTITY_HOST, 0),
        (TRACE_TO_LXC, TRACE_REASON_CT_REPLY, a.lxc_id, IDENTITY_HOST, a.identity, a.lxc_id)]
    # ICMP port unreachable answering a's UDP datagram is related, from an
    # endpoint (from-container) and from the host (to-container)
    assert topo.udp(a, b.ipv4, 7777) == REFUSED
    assert icmp_traces(between(drain(reader), a, b)) == [
        (TRACE_TO_LXC, TRACE_REASON_CT_RELATED, b.lxc_id, b.identity, a.identity, a.lxc_id)]
    assert topo.udp(a, topo.router4, 7777) == REFUSED
    assert icmp_traces(drain(reader)) == [
        (TRACE_TO_LXC, TRACE_REASON_CT_RELATED, a.lxc_id, IDENTITY_HOST, a.identity, a.lxc_id)]


def test_every_established_packet_to_the_stack_is_traced_with_both_identities_at_none(
        topo, datapath, abc, reader):
    a, _, _ = abc
    datapath.maps.config.set_monitor_aggregation(cfg.MONITOR_AGGREGATION_NONE)
    assert topo.run_tool(a, "ping", topo.router4, "count=3") == OK
    got = icmp_traces(drain(reader))
    assert got == [(TRACE_FROM_LXC, state, a.lxc_id, a.identity, IDENTITY_HOST, 0) if i % 3 == 0 else
                   (TRACE_TO_STACK, state, a.lxc_id, a.identity, IDENTITY_HOST, 0) if i % 3 == 1 else
                   (TRACE_TO_LXC, TRACE_REASON_CT_REPLY, a.lxc_id, IDENTITY_HOST, a.identity, a.lxc_id)
                   for i, state in enumerate([TRACE_REASON_POLICY] * 3 + [TRACE_REASON_CT_ESTABLISHED] * 6)]


def test_ipv6_traces(topo, datapath, abc, reader):
    a, b, _ = abc
    datapath.maps.config.set_monitor_aggregation(cfg.MONITOR_AGGREGATION_MEDIUM)
    drain(reader)
    assert topo.ping(a, b.ipv6)
    evs = [e for e in drain(reader) if e.type == NOTIFY_TRACE and e.data[12:14] == b"\x86\xdd"
           and e.data[14 + 6] == 58 and e.data[14 + 40] in (128, 129)]     # ICMPv6 echo
    assert [(e.subtype, e.reason, e.source, e.src_label, e.dst_label, e.dst_id) for e in evs] == [
        (TRACE_TO_LXC, TRACE_REASON_POLICY, a.lxc_id, a.identity, b.identity, b.lxc_id),
        (TRACE_TO_LXC, TRACE_REASON_CT_REPLY, b.lxc_id, b.identity, a.identity, a.lxc_id)]


PAUSED_CLIENT = """
import socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])))
s.sendall(b"x"); time.sleep(float(sys.argv[3])); s.sendall(b"y")
s.shutdown(socket.SHUT_WR); s.recv(100)
"""


def paused_flow_traces(topo, reader, a, b) -> tuple[list, list]:
    """Traces of a connection that sends, pauses past CT_REPORT_INTERVAL (5 s)
    and sends again: (before the pause, after it)."""
    topo.serve(b, PORT + 2, mode="sink")
    drain(reader)
    client = subprocess.Popen(["ip", "netns", "exec", a.netns, PYTHON, "-c", PAUSED_CLIENT,
                               b.ipv4, str(PORT + 2), "6"])
    try:
        time.sleep(2.5)
        before = between(drain(reader), a, b)
        assert client.wait(timeout=20) == 0
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    return before, between(drain(reader), a, b)


def test_medium_reports_an_idle_connection_again_after_the_interval(topo, datapath, abc, reader):
    a, b, _ = abc
    datapath.maps.config.set_monitor_aggregation(cfg.MONITOR_AGGREGATION_MEDIUM)
    before, after = paused_flow_traces(topo, reader, a, b)
    assert [e.reason for e in before][:1] == [TRACE_REASON_POLICY]
    assert not [e for e in before if pkt(e).payload]     # "x" came < 5 s after the SYN
    periodic = [e for e in after if pkt(e).payload and not pkt(e).tcp_flags & TCP_FIN]
    assert [(pkt(e).saddr, e.reason) for e in periodic][:1] == [(a.ipv4, TRACE_REASON_CT_ESTABLISHED)]


def test_maximum_reports_state_changes_but_never_periodically(topo, datapath, abc, reader):
    a, b, _ = abc
    datapath.maps.config.set_monitor_aggregation(cfg.MONITOR_AGGREGATION_MAX)
    before, after = paused_flow_traces(topo, reader, a, b)
    assert [e.reason for e in before][:1] == [TRACE_REASON_POLICY]
    assert not [e for e in after if not pkt(e).tcp_flags & (TCP_FIN | TCP_RST)]
    assert {pkt(e).saddr for e in after} == {a.ipv4, b.ipv4}   # both FINs


def verdicts(evs):
    return [(e.source, e.direction, e.verdict, e.match_type, e.src_label, e.dst_label, e.proto, e.dport)
            for e in evs if e.type == NOTIFY_POLICY_VERDICT]


def test_policy_verdicts_per_match_type_for_new_connections_only(topo, datapath, abc, reader):
    a, b, c = abc
    maps = datapath.maps
    maps.config.set_monitor_aggregation(cfg.MONITOR_AGGREGATION_MAX)  # verdicts are never aggregated
    topo.serve(b, PORT, PORT + 3, PORT + 4)
    maps.endpoints.upsert(b.endpoint(ingress=True))
    ingress = (b.lxc_id, DIRECTION_INGRESS)
    cases = [
        # (policy of b, client, port, want exit code, verdict, match)
        ([PolicyEntry(a.identity, "ingress", PORT, "tcp")], a, PORT, OK, 0, POLICY_MATCH_L3_L4),
        ([PolicyEntry(a.identity, "ingress")], a, PORT, OK, 0, POLICY_MATCH_L3_ONLY),
        ([PolicyEntry(0, "ingress", PORT + 3, "tcp")], c, PORT + 3, OK, 0, POLICY_MATCH_L4_ONLY),
        ([PolicyEntry(0, "ingress")], c, PORT + 4, OK, 0, POLICY_MATCH_ALL),
        ([PolicyEntry(a.identity, "ingress", PORT, "tcp", deny=True)], a, PORT, 2, DROP_POLICY_DENY,
         POLICY_MATCH_L3_L4),
        ([PolicyEntry(a.identity, "ingress", PORT + 3, "tcp")], a, PORT, 2, DROP_POLICY_L4, POLICY_MATCH_NONE),
        ([], c, PORT, 2, DROP_POLICY, POLICY_MATCH_NONE),
    ]
    for entries, client, port, code, verdict, match in cases:
        maps.policy.set_endpoint_policy(b.lxc_id, entries)
        maps.ct.flush()
        drain(reader)
        assert topo.tcp(client, b.ipv4, port) == code, (entries, client.name)
        evs = drain(reader)
        got = verdicts(evs)
        # one verdict for the connection, however many packets it had (a
        # denied SYN is retransmitted within the client's 1 s timeout: one
        # verdict per attempt, all the same)
        assert got and set(got) == {(*ingress, verdict, match, client.identity, b.identity, 6, port)}, \
            (entries, got)
        if verdict == 0:
            assert len(got) == 1
        else:
            assert len(got) == len([e for e in evs if e.type == NOTIFY_DROP and e.subtype == verdict])


def test_policy_verdict_egress(topo, datapath, abc, reader):
    a, b, c = abc
    maps = datapath.maps
    maps.endpoints.upsert(a.endpoint(egress=True))
    maps.policy.set_endpoint_policy(a.lxc_id, [PolicyEntry(b.identity, "egress")])
    drain(reader)
    assert topo.ping(a, b.ipv4)
    assert not topo.ping(a, c.ipv4)
    got = verdicts(drain(reader))
    assert got[0] == (a.lxc_id, DIRECTION_EGRESS, 0, POLICY_MATCH_L3_ONLY, a.identity, b.identity, 1, 0)
    assert set(got[1:]) == {(a.lxc_id, DIRECTION_EGRESS, DROP_POLICY, POLICY_MATCH_NONE, a.identity,
                             c.identity, 1, 0)}


def test_debug_events_only_with_the_debug_flag(topo, datapath, abc, reader):
    a, b, _ = abc
    maps = datapath.maps
    drain(reader)
    assert topo.ping(a, b.ipv4)
    assert not [e for e in drain(reader) if e.type == NOTIFY_DEBUG]
    maps.config.set_debug(True)
    try:
        maps.ct.flush()
        assert topo.ping(a, b.ipv4)
        maps.endpoints.upsert(b.endpoint(ingress=True))
        maps.policy.set_endpoint_policy(b.lxc_id, [])
        assert not topo.ping(a, b.ipv4)
        dbg = [e for e in drain(reader) if e.type == NOTIFY_DEBUG]
    finally:
        maps.config.set_debug(False)
    kinds = {e.subtype for e in dbg}
    assert {DBG_CT_LOOKUP4_1, DBG_CT_VERDICT, DBG_CT_CREATED4, DBG_LOCAL_DELIVERY, DBG_POLICY_DENIED} <= kinds
    msgs = [e.message for e in dbg]
    assert any(m.startswith(f"Conntrack lookup 1/2: src={a.ipv4}:") and f"dst={b.ipv4}:" in m for m in msgs)
    assert "CT verdict: New, revnat=0" in msgs
    assert f"Conntrack create: proxy-port=0 revnat=0 src-identity={a.identity} lb=0.0.0.0" in msgs
    assert f"Attempting local delivery for container id {b.lxc_id} from seclabel {a.identity}" in msgs
    assert f"Policy evaluation would deny packet from {a.identity} to {b.identity}" in msgs
    assert all(e.len_cap == 0 and e.data == b"" for e in dbg)


def test_batching_reader_gets_sparse_events_by_consume_and_every_event(topo, datapath, abc):
    a, b, c = abc
    maps = datapath.maps
    reader = maps.event_reader(page_cnt=256, wakeup_events=64)   # a fresh ring counts from 0
    try:
        maps.config.set_monitor_aggregation(cfg.MONITOR_AGGREGATION_NONE)
        # one drop: too few events to wake the reader, but consume() has it
        maps.endpoints.upsert(c.endpoint(ingress=True))
        maps.policy.set_endpoint_policy(c.lxc_id, [])
        assert not topo.ping(a, c.ipv4)
        assert not [e for e in reader.poll(300) if e.type == NOTIFY_DROP]
        assert [e.subtype for e in reader.consume() if e.type == NOTIFY_DROP] == [DROP_POLICY]
        # a connection's worth of traces: every one arrives
        topo.serve(b, PORT)
        assert topo.tcp(a, b.ipv4, PORT) == OK
        evs = between(reader.poll(300) + reader.consume(), a, b)
        n = ct_packets(maps, a, b)
        assert len([e for e in evs if e.subtype == TRACE_FROM_LXC]) == n >= 7 and reader.lost == 0
    finally:
        reader.close()
