"""Holes a container could use to get past the datapath (issue 6, items 2, 8,
9, 10 and neighbour discovery), probed with real packets: crafted frames from
AF_PACKET and raw IP sockets inside the test namespaces (see conftest.py),
observed by sockets in the other namespaces and on the host."""

from __future__ import annotations

import ipaddress
import random
import socket
import struct
import time

import pytest

from docker_cilium.datapath.drop import (
    DROP_CT_CREATE_FAILED,
    DROP_INVALID_SIP as DROP_SIP,
    DROP_INVALID_SMAC as DROP_SMAC,
    DROP_POLICY,
    DROP_UNKNOWN_L3,
    DROP_VLAN_FILTERED,
)
from docker_cilium.datapath.maps.ctmap import CT_F_SEEN_REPLY, monotonic_seconds
from docker_cilium.datapath.maps.policymap import PolicyEntry

from tests.privileged.conftest import sh
from tests.privileged.nettool import csum
from tests.packets import (
    ETH_P_ARP,
    ETH_P_IP,
    arp,
    frame_from,
    ip4,
    ipv4,
    ipv6,
    mac,
    marker,
    udp,
    vlan,
)

pytestmark = pytest.mark.privileged

OK, TIMEOUT, REFUSED = 0, 2, 3
ETH_P_UNKNOWN = 0x88B5          # IEEE "local experimental" ethertype


def drops(dp, reason: int) -> int:
    return dp.maps.metrics.count(reason)


# ---- item 2: only IPv4, IPv6 and own-address ARP leave a container --------
def test_vlan_and_unknown_ethertype_frames_are_dropped(topo, datapath, abc):
    """Tagged frames (VLAN 0, once or twice) and unknown ethertypes from a
    container reach no other namespace and not the host; C admits only B."""
    a, b, c = abc
    maps = datapath.maps
    maps.endpoints.upsert(c.endpoint(ingress=True))
    maps.policy.set_endpoint_policy(c.lxc_id, [PolicyEntry(b.identity, "ingress")])
    port = random.randrange(20000, 60000)
    m = marker()
    at_b = topo.sniff(b, f"udp:{port}", m)
    at_c = topo.sniff(c, f"udp:{port}", m)
    at_host = topo.sniff(None, f"udp:{port}", m)
    at_host_l2 = topo.sniff(None, f"eth:{ETH_P_UNKNOWN:x}:{a.host_if}", m)
    vlan_before, l3_before = drops(datapath, DROP_VLAN_FILTERED), drops(datapath, DROP_UNKNOWN_L3)
    frames = [
        frame_from(a, vlan(1, ETH_P_IP), ipv4(a.ipv4, b.ipv4, 17, udp(5000, port, m))),
        frame_from(a, vlan(2, ETH_P_IP), ipv4(a.ipv4, b.ipv4, 17, udp(5000, port, m))),
        # B's address on a double-tagged frame: would pass C's "only B" rule
        frame_from(a, vlan(2, ETH_P_IP), ipv4(b.ipv4, c.ipv4, 17, udp(5000, port, m))),
        frame_from(a, vlan(2, ETH_P_IP), ipv4(a.ipv4, topo.router4, 17, udp(5000, port, m))),
        frame_from(a, struct.pack("!H", ETH_P_UNKNOWN), m + b"\0" * 40),
    ]
    for f in frames:
        assert topo.run_tool(a, "sendframe", f) == OK
    # control: the same datagram untagged arrives (the observers work)
    assert topo.run_tool(a, "sendframe", frame_from(
        a, vlan(0, ETH_P_IP), ipv4(a.ipv4, b.ipv4, 17, udp(5000, port, m)))) == OK
    assert (at_b.count(), at_c.count(), at_host.count(), at_host_l2.count()) == (1, 0, 0, 0)
    assert drops(datapath, DROP_VLAN_FILTERED) >= vlan_before + 4
    assert drops(datapath, DROP_UNKNOWN_L3) >= l3_before + 1


def test_arp_only_for_own_addresses(topo, datapath, abc):
    """ARP claiming another endpoint's address (or another MAC) never reaches
    the host; the endpoint's own ARP does."""
    a, b, c = abc
    sh("ip", "neigh", "flush", "dev", a.host_if, check=False)
    # the marker of an ARP packet is its sender (hardware, protocol) pair
    spoof_ip = topo.sniff(None, f"eth:{ETH_P_ARP:x}:{a.host_if}", mac(a.mac) + ip4(b.ipv4))
    spoof_mac = topo.sniff(None, f"eth:{ETH_P_ARP:x}:{a.host_if}",
                           mac("02:00:00:00:00:77") + ip4(a.ipv4))
    own = topo.sniff(None, f"eth:{ETH_P_ARP:x}:{a.host_if}", mac(a.mac) + ip4(a.ipv4))
    sip_before, smac_before = drops(datapath, DROP_SIP), drops(datapath, DROP_SMAC)
    eth_arp = struct.pack("!H", ETH_P_ARP)
    for op in (1, 2):       # request and (unsolicited) reply
        assert topo.run_tool(a, "sendframe", frame_from(
            a, eth_arp, arp(op, a.mac, b.ipv4, topo.router4))) == OK
        assert topo.run_tool(a, "sendframe", frame_from(
            a, eth_arp, arp(op, "02:00:00:00:00:77", a.ipv4, topo.router4))) == OK
    assert topo.run_tool(a, "sendframe", frame_from(
        a, eth_arp, arp(1, a.mac, a.ipv4, topo.router4))) == OK
    assert (spoof_ip.count(), spoof_mac.count(), own.count()) == (0, 0, 1)
    assert drops(datapath, DROP_SIP) >= sip_before + 2
    assert drops(datapath, DROP_SMAC) >= smac_before + 2
    neigh = sh("ip", "neigh", "show", "dev", a.host_if).stdout
    assert b.ipv4 not in neigh.split(), neigh
    assert topo.ping(a, b.ipv4)       # the kernel's own ARP keeps working


def test_arp_probe_from_own_mac_passes(topo, datapath, abc):
    """RFC 5227 probes (request, sender IP 0.0.0.0) from the endpoint's MAC
    reach the host; a probe with another sender MAC and a reply with sender
    IP 0.0.0.0 do not."""
    a, b, c = abc
    eth_arp = struct.pack("!H", ETH_P_ARP)
    # the marker: sender (hardware, protocol) and target fields
    probe = arp(1, a.mac, "0.0.0.0", a.ipv4)
    foreign = arp(1, "02:00:00:00:00:77", "0.0.0.0", a.ipv4)
    zero_reply = arp(2, a.mac, "0.0.0.0", topo.router4)
    seen = [topo.sniff(None, f"eth:{ETH_P_ARP:x}:{a.host_if}", p[8:]) for p in (probe, foreign, zero_reply)]
    sip_before, smac_before = drops(datapath, DROP_SIP), drops(datapath, DROP_SMAC)
    for p in (probe, foreign, zero_reply):
        assert topo.run_tool(a, "sendframe", frame_from(a, eth_arp, p)) == OK
    assert [s.count() for s in seen] == [1, 0, 0]
    assert drops(datapath, DROP_SMAC) >= smac_before + 1
    assert drops(datapath, DROP_SIP) >= sip_before + 1


# ---- item 8: fragments ----------------------------------------------------
def test_fragmented_udp_to_ingress_enforced_endpoint(topo, datapath, abc):
    """3000-byte datagrams at MTU 1400: delivered whole to an allowed port
    (from an endpoint, from the host, and as a reply), not to a denied one."""
    a, b, c = abc
    maps = datapath.maps
    sh("ip", "netns", "exec", a.netns, "ip", "link", "set", "eth0", "mtu", "1400")
    topo.serve(b, 8080, 8081)
    topo.serve(a, 9000)
    maps.endpoints.upsert(b.endpoint(ingress=True))
    maps.policy.set_endpoint_policy(b.lxc_id, [PolicyEntry(a.identity, "ingress", 8080, "udp"),
                                               PolicyEntry(1, "ingress", 8080, "udp")])
    maps.ct.flush()
    assert topo.run_tool(a, "udpsize", b.ipv4, 8080, 3000) == OK
    assert topo.run_tool(a, "udpsize", b.ipv6, 8080, 3000) == OK
    assert topo.run_tool(None, "udpsize", b.ipv4, 8080, 3000) == OK     # to-container path
    assert topo.run_tool(None, "udpsize", b.ipv6, 8080, 3000) == OK
    assert topo.run_tool(a, "udpsize", b.ipv4, 8081, 3000) == TIMEOUT   # denied port
    assert topo.run_tool(a, "udpsize", b.ipv6, 8081, 3000) == TIMEOUT
    # B asks A; A's 3000-byte reply comes back in fragments (the DNS case)
    assert topo.run_tool(b, "udpget", a.ipv4, 9000, 3000) == OK
    assert topo.run_tool(b, "udpget", a.ipv6, 9000, 3000) == OK
    assert topo.udp(a, b.ipv4, 8080) == OK                               # small still fine


# ---- item 9: ICMP errors --------------------------------------------------
def _flow_sport(maps, saddr: str, daddr: str, dport: int) -> int:
    for e in maps.ct.dump():
        if (e.saddr, e.daddr, e.dport, e.proto) == (saddr, daddr, dport, 17):
            return e.sport
    raise AssertionError(f"no CT entry {saddr} -> {daddr}:{dport}")


def _port_unreachable(family: int, inner_src: str, inner_dst: str, sport: int, dport: int,
                      m: bytes) -> bytes:
    quoted_udp = udp(sport, dport, m)
    if family == 4:
        body = struct.pack("!BBHI", 3, 3, 0, 0) + ipv4(inner_src, inner_dst, 17, quoted_udp)
        return body[:2] + struct.pack("!H", csum(body)) + body[4:]
    # ICMPv6: the kernel fills in the checksum of raw ICMPv6 sockets
    return struct.pack("!BBHI", 1, 4, 0, 0) + ipv6(inner_src, inner_dst, 17, quoted_udp)


@pytest.mark.parametrize("family", [4, 6])
def test_icmp_error_cannot_be_injected_into_others_flows(topo, datapath, abc, family):
    """C forges a port-unreachable into A's flow to B: dropped by A's ingress
    policy; the same error from B (the flow's peer) is related and passes."""
    a, b, c = abc
    maps = datapath.maps
    addr = (lambda x: x.ipv4) if family == 4 else (lambda x: x.ipv6)
    proto = 1 if family == 4 else 58
    topo.serve(b, 8080)
    maps.endpoints.upsert(a.endpoint(ingress=True))
    maps.policy.set_endpoint_policy(a.lxc_id, [])
    maps.ct.flush()
    assert topo.udp(a, addr(b), 8080) == OK
    sport = _flow_sport(maps, addr(a), addr(b), 8080)
    forged, genuine = marker(), marker()
    kind = "icmp4" if family == 4 else "icmp6"
    got_forged, got_genuine = topo.sniff(a, kind, forged), topo.sniff(a, kind, genuine)
    before = drops(datapath, DROP_POLICY)
    assert topo.run_tool(c, "rawip", addr(a), proto, _port_unreachable(
        family, addr(a), addr(b), sport, 8080, forged).hex()) == OK
    assert topo.run_tool(b, "rawip", addr(a), proto, _port_unreachable(
        family, addr(a), addr(b), sport, 8080, genuine).hex()) == OK
    assert (got_forged.count(), got_genuine.count()) == (0, 1)
    assert drops(datapath, DROP_POLICY) > before
    assert topo.udp(a, addr(b), 7777) == REFUSED      # the kernel's own error still arrives


# ---- item 10: conntrack lifetimes and budget -------------------------------
def _entries(maps, saddr: str, daddr: str):
    return [e for e in maps.ct.dump() if e.saddr == saddr and e.daddr == daddr]


def test_ct_entries_without_reply_are_short_lived(topo, datapath, abc):
    """A bare ACK creates no 6-hour entry; unreplied entries are not extended
    by their originator; a connection the peer answered is marked replied and
    lives long (6 h TCP, refreshed UDP)."""
    a, b, c = abc
    maps = datapath.maps
    hole4, _ = topo.blackhole(250)
    topo.serve(b, 8080)
    topo.serve(b, 9100, mode="sink")
    maps.ct.flush()
    assert topo.run_tool(a, "tcpraw", hole4, 443, 1) == OK
    [ack] = _entries(maps, a.ipv4, hole4)
    assert ack.lifetime <= monotonic_seconds() + 60, ack
    assert not ack.flags & CT_F_SEEN_REPLY, ack
    assert topo.run_tool(a, "rawip", hole4, 17, udp(5353, 5353, b"one").hex()) == OK
    [unreplied] = [e for e in _entries(maps, a.ipv4, hole4) if e.proto == 17]
    assert not unreplied.flags & CT_F_SEEN_REPLY, unreplied
    time.sleep(1.2)
    assert topo.run_tool(a, "rawip", hole4, 17, udp(5353, 5353, b"two").hex()) == OK
    assert [e for e in _entries(maps, a.ipv4, hole4) if e.proto == 17][0].lifetime == unreplied.lifetime
    # an open connection the peer answered: replied, 6 h (not closing yet)
    topo.serve(a, b.ipv4, 9100, mode="tcphold")
    [conn] = [e for e in _entries(maps, a.ipv4, b.ipv4) if e.proto == 6 and e.dport == 9100]
    assert conn.flags & CT_F_SEEN_REPLY, conn
    assert conn.lifetime > monotonic_seconds() + 3600, conn
    assert topo.udp(a, b.ipv4, 8080) == OK
    [udp_entry] = [e for e in _entries(maps, a.ipv4, b.ipv4) if e.proto == 17]
    assert udp_entry.flags & CT_F_SEEN_REPLY, udp_entry
    assert udp_entry.lifetime > monotonic_seconds() + 55     # replied: refreshed


def test_one_endpoint_cannot_evict_others_ct_entries(topo, small_ct):
    """A floods bare ACKs from 3000 source ports (3x the table): it gets at
    most its budget of entries, C's tracked flow survives, C and B can still
    open flows."""
    dp, (a, b, c) = small_ct
    maps = dp.maps
    hole4, _ = topo.blackhole(250)
    topo.serve(b, 8080)
    assert topo.udp(c, b.ipv4, 8080) == OK
    assert _entries(maps, c.ipv4, b.ipv4)
    before = drops(dp, DROP_CT_CREATE_FAILED)
    assert topo.run_tool(a, "tcpraw", hole4, 443, 3000) == OK
    assert len(_entries(maps, a.ipv4, hole4)) <= 64
    assert drops(dp, DROP_CT_CREATE_FAILED) >= before + 3000 - 64
    assert _entries(maps, c.ipv4, b.ipv4), "C's entry was evicted"
    assert topo.tcp(c, b.ipv4, 8080) == OK
    assert topo.udp(b, c.ipv4, 9) in (TIMEOUT, REFUSED)   # B's budget is its own
    assert _entries(maps, b.ipv4, c.ipv4)


# ---- neighbour discovery ---------------------------------------------------
def _ns(target: str, src_mac: str, m: bytes = b"") -> bytes:
    """Neighbour solicitation for target; m rides in an unknown option."""
    opts = struct.pack("!BB6s", 1, 1, mac(src_mac))
    if m:
        m = m + b"\0" * (-(len(m) + 2) % 8)
        opts += struct.pack("!BB", 254, (len(m) + 2) // 8) + m
    return struct.pack("!BBHI", 135, 0, 0, 0) + socket.inet_pton(socket.AF_INET6, target) + opts


def test_nd_faces_egress_policy_beyond_the_link(topo, datapath, abc):
    """With egress allowing only B, A's ND still works towards the router,
    but an NS to C's address is policy-checked (and dropped)."""
    a, b, c = abc
    maps = datapath.maps
    maps.endpoints.upsert(a.endpoint(egress=True))
    maps.policy.set_endpoint_policy(a.lxc_id, [PolicyEntry(b.identity, "egress")])
    maps.ct.flush()
    sh("ip", "netns", "exec", a.netns, "ip", "-6", "neigh", "flush", "dev", "eth0")
    assert topo.ping(a, b.ipv6)            # needs ND for the router: allowed
    m = marker()
    at_c = topo.sniff(c, "icmp6", m)
    na = topo.sniff(a, "icmp6", ipaddress.IPv6Address(topo.router6).packed)
    before = drops(datapath, DROP_POLICY)
    assert topo.run_tool(a, "rawip", c.ipv6, 58, _ns(c.ipv6, a.mac, m).hex(), "hops=255") == OK
    # unicast NS to the router (neighbour unreachability detection): answered
    assert topo.run_tool(a, "rawip", topo.router6, 58, _ns(topo.router6, a.mac).hex(),
                         "hops=255") == OK
    assert at_c.count() == 0
    assert na.count() >= 1
    assert drops(datapath, DROP_POLICY) > before
