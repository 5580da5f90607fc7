"""A container cannot pass another's policy as someone else (issue 11,
"Security"): crafted frames from A (AF_PACKET in its namespace, what
CAP_NET_RAW, granted to Docker containers by default, allows) towards C,
whose ingress policy admits B only, or towards B, whose policy admits A on
one port only. Real BPF on veths between throwaway namespaces (conftest.py).

Cases proven elsewhere and not repeated here:
test_datapath.py::test_antispoofing (an unknown source address, a forged
MAC with the kernel's own packets), test_datapath_hardening.py (802.1Q
VLAN 0 tags once or twice, unknown ethertypes, ARP for another's address or
with another MAC, ICMP errors forged into others' flows, ND beyond the link)
and test_fragments.py (spoofed first fragments, later fragments without or
before their first one, IPv6 atomic fragments, Destination Options after the
Fragment header).
"""

from __future__ import annotations

import os
import random
import struct

import pytest

from docker_cilium.datapath.drop import (
    DROP_ENCAP_PROHIBITED,
    DROP_INVALID_EXTHDR,
    DROP_INVALID_SIP,
    DROP_INVALID_SMAC,
    DROP_POLICY_DENY,
    DROP_VLAN_FILTERED,
)
from docker_cilium.datapath.loader import Datapath, compile_datapath
from docker_cilium.datapath.maps.policymap import PolicyEntry
from docker_cilium.identity import reserved
from tests.packets import (
    ETH_P_ARP,
    ETH_P_IP,
    ETH_P_IPV6,
    IPPROTO_DSTOPTS,
    IPPROTO_FRAGMENT,
    arp,
    dstopts_padn,
    frag6,
    frame_from,
    ip4,
    ip6,
    ipv4,
    ipv6,
    mac,
    marker,
    udp,
    udp6,
)
from tests.privileged.conftest import make_abc, sh
from tests.privileged.nettool import csum

pytestmark = pytest.mark.privileged

OK = 0
PORT = 7682          # 0x1e02: also the bytes of a valid IPv4 option (type 30, length 2)
DENIED = PORT + 1
IPPROTO_HOPOPTS, IPPROTO_ROUTING = 0, 43
ETH_P_8021AD, ETH_P_8021Q = 0x88A8, 0x8100


def drops(dp, reason: int) -> int:
    return dp.maps.metrics.count(reason)


def send(topo, c, ethertype: int, pkt: bytes) -> None:
    assert topo.run_tool(c, "sendframe", frame_from(c, struct.pack("!H", ethertype), pkt)) == OK


def only_b_to_c(datapath, b, c) -> None:
    """C's ingress admits B (any port) and nobody else."""
    datapath.maps.endpoints.upsert(c.endpoint(ingress=True))
    datapath.maps.policy.set_endpoint_policy(c.lxc_id, [PolicyEntry(b.identity, "ingress")])


# ---- another endpoint's addresses -----------------------------------------
def test_anothers_ip_and_mac_together_do_not_pass_its_policy(topo, datapath, abc):
    """A sends as B (B's IPv4/IPv6 with B's MAC, or with its own MAC) to C,
    which admits only B: nothing arrives; B's own datagrams do (control)."""
    a, b, c = abc
    only_b_to_c(datapath, b, c)
    m = marker()
    at_c = topo.sniff(c, f"udp:{PORT}", m)
    sip, smac = drops(datapath, DROP_INVALID_SIP), drops(datapath, DROP_INVALID_SMAC)
    for src_mac in (b.mac, a.mac):
        for ethertype, pkt in ((ETH_P_IP, ipv4(b.ipv4, c.ipv4, 17, udp(5000, PORT, m))),
                               (ETH_P_IPV6, ipv6(b.ipv6, c.ipv6, 17, udp6(b.ipv6, c.ipv6, 5000, PORT, m)))):
            frame = mac(a.node_mac) + mac(src_mac) + struct.pack("!H", ethertype) + pkt
            assert topo.run_tool(a, "sendframe", frame.hex()) == OK
    for ethertype, pkt in ((ETH_P_IP, ipv4(b.ipv4, c.ipv4, 17, udp(5000, PORT, m))),
                           (ETH_P_IPV6, ipv6(b.ipv6, c.ipv6, 17, udp6(b.ipv6, c.ipv6, 5000, PORT, m)))):
        send(topo, b, ethertype, pkt)
    assert at_c.count() == 2
    assert drops(datapath, DROP_INVALID_SMAC) >= smac + 2
    assert drops(datapath, DROP_INVALID_SIP) >= sip + 2


# ---- IPv4 options -----------------------------------------------------------
def ipv4_with_options(src: str, dst: str, options: bytes, payload: bytes) -> bytes:
    """An IPv4 header of 20 + len(options) bytes (a multiple of 4), then payload."""
    assert len(options) % 4 == 0 and len(options) <= 40
    ihl = 5 + len(options) // 4
    hdr = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, 4 * ihl + len(payload), random.randrange(1, 0xFFFF),
                      0, 64, 17, 0, ip4(src), ip4(dst)) + options
    return hdr[:10] + struct.pack("!H", csum(hdr)) + hdr[12:] + payload


# Two NOPs, then an (unknown, ignored) option of type 30 and length 2: read as
# a UDP header by a parser that took the L4 header to start at byte 20, its
# ports would be 257 -> PORT.
DECOY = bytes([1, 1, 30, 2])
# 40 bytes: a timestamp option (type 68) with room for 9 stamps.
TIMESTAMPS = bytes([68, 40, 5, 0]) + bytes(36)


@pytest.mark.parametrize("options", [DECOY, TIMESTAMPS], ids=["decoy-ports", "40-bytes"])
def test_ipv4_options_hide_neither_source_nor_ports(topo, datapath, abc, options):
    """B admits A on udp/PORT only, C admits B only. With IPv4 options in the
    header, A's datagram to B's PORT arrives (control), the one to DENIED
    does not (ports are read after the options) and A's datagram as B to C
    is dropped as a spoofed source."""
    a, b, c = abc
    only_b_to_c(datapath, b, c)
    datapath.maps.endpoints.upsert(b.endpoint(ingress=True))
    datapath.maps.policy.set_endpoint_policy(b.lxc_id, [PolicyEntry(a.identity, "ingress", PORT, "udp")])
    m = marker()
    allowed, denied, spoofed = (topo.sniff(b, f"udp:{PORT}", m), topo.sniff(b, f"udp:{DENIED}", m),
                                topo.sniff(c, f"udp:{PORT}", m))
    sip = drops(datapath, DROP_INVALID_SIP)
    send(topo, a, ETH_P_IP, ipv4_with_options(a.ipv4, b.ipv4, options, udp(5000, PORT, m)))
    send(topo, a, ETH_P_IP, ipv4_with_options(a.ipv4, b.ipv4, options, udp(257, DENIED, m)))
    send(topo, a, ETH_P_IP, ipv4_with_options(b.ipv4, c.ipv4, options, udp(5000, PORT, m)))
    assert (allowed.count(), denied.count(), spoofed.count()) == (1, 0, 0)
    assert drops(datapath, DROP_INVALID_SIP) == sip + 1


# ---- IPv6 extension headers -------------------------------------------------
def hop_by_hop(nexthdr: int) -> bytes:
    return struct.pack("!BBBB4x", nexthdr, 0, 1, 4)       # PadN only


def routing0(nexthdr: int, via: str, left: int = 0) -> bytes:
    """A Routing header (type 0) with left segments left (0: ignored by its
    receiver)."""
    return struct.pack("!BBBB4x", nexthdr, 2, 0, left) + ip6(via)


def atomic_fragment(nexthdr: int) -> bytes:
    return frag6(nexthdr, 0, False, random.randrange(1, 1 << 32), b"")


# (name, [header kinds], delivered when allowed): more headers than the
# datapath walks (4) are dropped, as Cilium does (DROP_INVALID_EXTHDR).
CHAINS = [
    ("hop-by-hop", ["hbh"], True),
    ("destination-options", ["dst"], True),
    ("routing", ["rt"], True),
    ("fragment", ["frag"], True),
    ("four", ["hbh", "dst", "rt", "dst"], True),
    ("five", ["hbh", "dst", "dst", "dst", "dst"], False),
]
CODES = {"hbh": IPPROTO_HOPOPTS, "dst": IPPROTO_DSTOPTS, "rt": IPPROTO_ROUTING, "frag": IPPROTO_FRAGMENT}


def with_chain(kinds: list[str], src: str, dst: str, dgram: bytes, via: str) -> bytes:
    """An IPv6 packet src -> dst carrying the extension headers kinds, then UDP."""
    body, nexthdr = dgram, 17
    for kind in reversed(kinds):
        hdr = {"hbh": hop_by_hop, "dst": dstopts_padn, "frag": atomic_fragment}.get(kind)
        body = (hdr(nexthdr) if hdr else routing0(nexthdr, via)) + body
        nexthdr = CODES[kind]
    return ipv6(src, dst, nexthdr, body)


@pytest.mark.parametrize("kinds, delivered", [(k, d) for _, k, d in CHAINS], ids=[n for n, _, _ in CHAINS])
def test_ipv6_extension_headers_hide_neither_source_nor_ports(topo, datapath, abc, kinds, delivered):
    """B admits A on every port but denies udp/DENIED; C admits B only. Behind
    the extension headers, A's datagram to DENIED is dropped by the deny rule
    and A's datagram as B to C as a spoofed source; the one to PORT arrives
    (control), unless the chain is longer than the datapath reads, when it
    is dropped rather than judged without its ports."""
    a, b, c = abc
    only_b_to_c(datapath, b, c)
    datapath.maps.endpoints.upsert(b.endpoint(ingress=True))
    datapath.maps.policy.set_endpoint_policy(b.lxc_id, [
        PolicyEntry(a.identity, "ingress"), PolicyEntry(a.identity, "ingress", DENIED, "udp", deny=True)])
    m = marker()
    allowed, denied, spoofed = (topo.sniff(b, f"udp:{PORT}", m), topo.sniff(b, f"udp:{DENIED}", m),
                                topo.sniff(c, f"udp:{PORT}", m))
    sip, deny, exthdr = (drops(datapath, r) for r in (DROP_INVALID_SIP, DROP_POLICY_DENY, DROP_INVALID_EXTHDR))
    for src, dst, port in ((a, b, PORT), (a, b, DENIED), (b, c, PORT)):
        send(topo, a, ETH_P_IPV6, with_chain(kinds, src.ipv6, dst.ipv6,
                                             udp6(src.ipv6, dst.ipv6, 5000, port, m), c.ipv6))
    assert (allowed.count(), denied.count(), spoofed.count()) == (int(delivered), 0, 0)
    assert drops(datapath, DROP_INVALID_SIP) == sip + (1 if delivered else 0)
    assert drops(datapath, DROP_POLICY_DENY) == deny + (1 if delivered else 0)
    assert drops(datapath, DROP_INVALID_EXTHDR) == exthdr + (0 if delivered else 3)


# ---- fragments ----------------------------------------------------------------
def datagram_in_two(family: int, src: str, dst: str, ident: int, tail: bytes) -> tuple[int, bytes, bytes]:
    """(ethertype, first fragment, later fragment) of a UDP datagram to PORT
    ending in tail (only in the later fragment, at an even offset)."""
    data, cut = b"x" * 40 + tail, 24
    if family == 4:
        dgram = udp(5000, PORT, data)
        return ETH_P_IP, ipv4(src, dst, 17, dgram[:cut], ident=ident, frag=0x2000), \
            ipv4(src, dst, 17, dgram[cut:], ident=ident, frag=cut // 8)
    dgram = udp6(src, dst, 5000, PORT, data)
    return ETH_P_IPV6, ipv6(src, dst, IPPROTO_FRAGMENT, frag6(17, 0, True, ident, dgram[:cut])), \
        ipv6(src, dst, IPPROTO_FRAGMENT, frag6(17, cut, False, ident, dgram[cut:]))


@pytest.mark.parametrize("family", [4, 6])
def test_spoofed_later_fragment_cannot_join_anothers_datagram(topo, datapath, abc, family):
    """B's first fragment to C (admitted, its ports recorded) is followed by
    A's later fragment as B with B's datagram id: dropped as a spoofed
    source, C's reassembly gets nothing; B's own later fragment completes
    the datagram (control: the pair was deliverable)."""
    a, b, c = abc
    addr = (lambda x: x.ipv4) if family == 4 else (lambda x: x.ipv6)
    only_b_to_c(datapath, b, c)
    ident = random.randrange(1, 0xFFFF)
    # the same 16-bit words in another order: one UDP checksum (in the first
    # fragment) is right for both datagrams
    x, y = marker() + b"\0", marker() + b"\0"
    forged, genuine = x + y, y + x
    ethertype, first, later_forged = datagram_in_two(family, addr(b), addr(c), ident, forged)
    _, _, later_genuine = datagram_in_two(family, addr(b), addr(c), ident, genuine)
    sip = drops(datapath, DROP_INVALID_SIP)
    got_forged = topo.sniff(c, f"udp:{PORT}", forged)
    send(topo, b, ethertype, first)
    send(topo, a, ethertype, later_forged)
    assert got_forged.count() == 0
    assert drops(datapath, DROP_INVALID_SIP) == sip + 1
    got_genuine = topo.sniff(c, f"udp:{PORT}", genuine)     # C still holds the first fragment
    send(topo, b, ethertype, later_genuine)
    assert got_genuine.count() == 1


# ---- VLAN tags ------------------------------------------------------------------
def tags(*tpid_vid: tuple[int, int]) -> bytes:
    return b"".join(struct.pack("!HH", tpid, vid) for tpid, vid in tpid_vid)


TAGGINGS = {
    "802.1ad": tags((ETH_P_8021AD, 0)),
    "802.1Q-vid-100": tags((ETH_P_8021Q, 100)),
    "802.1ad+802.1Q": tags((ETH_P_8021AD, 7), (ETH_P_8021Q, 100)),
}


@pytest.mark.parametrize("tagging", TAGGINGS.values(), ids=TAGGINGS.keys())
def test_tagged_frames_carry_no_spoofed_packet(topo, datapath, abc, tagging):
    """Behind 802.1ad (QinQ) or non-zero VLAN tags, A's IPv4 and IPv6
    datagrams as B to C (which admits only B), its own IPv4 datagram to B
    (no policy) and its ARP claiming B's address reach neither B, C nor the
    host."""
    a, b, c = abc
    only_b_to_c(datapath, b, c)
    m = marker()
    at_b, at_c = topo.sniff(b, f"udp:{PORT}", m), topo.sniff(c, f"udp:{PORT}", m)
    at_host = topo.sniff(None, f"udp:{PORT}", m)
    arp_at_host = topo.sniff(None, f"eth:{ETH_P_ARP:x}:{a.host_if}", mac(a.mac) + ip4(b.ipv4))
    vlan = drops(datapath, DROP_VLAN_FILTERED)
    frames = [
        (ETH_P_IP, ipv4(b.ipv4, c.ipv4, 17, udp(5000, PORT, m))),
        (ETH_P_IPV6, ipv6(b.ipv6, c.ipv6, 17, udp6(b.ipv6, c.ipv6, 5000, PORT, m))),
        (ETH_P_IP, ipv4(a.ipv4, b.ipv4, 17, udp(5000, PORT, m))),
        (ETH_P_ARP, arp(2, a.mac, b.ipv4, topo.router4)),
    ]
    for ethertype, pkt in frames:
        assert topo.run_tool(a, "sendframe", frame_from(a, tagging + struct.pack("!H", ethertype), pkt)) == OK
    assert (at_b.count(), at_c.count(), at_host.count(), arp_at_host.count()) == (0, 0, 0, 0)
    assert drops(datapath, DROP_VLAN_FILTERED) == vlan + len(frames)


# ---- source routes through the host --------------------------------------------
def lsrr(via: str) -> bytes:
    """IPv4 loose source route: one hop (via) left, then end of options."""
    return bytes([0x83, 7, 4]) + ip4(via) + b"\0"


def srh(nexthdr: int, final: str) -> bytes:
    """IPv6 Segment Routing header (type 4): one segment (final) left."""
    return struct.pack("!BBBBBBH", nexthdr, 2, 4, 1, 0, 0, 0) + ip6(final)


def test_source_routes_through_the_host_do_not_pass_egress_policy(topo, datapath, abc):
    """A's egress admits only the host. Datagrams to the host's router
    address carrying a source route (IPv4 LSRR, IPv6 Routing header type 0 or
    Segment Routing header) that names C as the next hop reach neither C nor
    a socket of the host; A's plain datagram to the host arrives and one
    straight to C is dropped (controls). The host's kernel refuses the
    routes (accept_source_route 0, seg6_enabled 0): the datapath only checks
    the first destination."""
    a, b, c = abc
    datapath.maps.endpoints.upsert(a.endpoint(egress=True))
    datapath.maps.policy.set_endpoint_policy(a.lxc_id, [PolicyEntry(reserved.HOST, "egress")])
    m = marker()
    at_c, at_host = topo.sniff(c, f"udp:{PORT}", m), topo.sniff(None, f"udp:{PORT}", m)
    r4, r6 = topo.router4, topo.router6
    send(topo, a, ETH_P_IP, ipv4_with_options(a.ipv4, r4, lsrr(c.ipv4), udp(5000, PORT, m)))
    for route in (routing0(17, c.ipv6, left=1), srh(17, c.ipv6)):
        send(topo, a, ETH_P_IPV6, ipv6(a.ipv6, r6, IPPROTO_ROUTING, route + udp6(a.ipv6, c.ipv6, 5000, PORT, m)))
    send(topo, a, ETH_P_IP, ipv4(a.ipv4, c.ipv4, 17, udp(5000, PORT, m)))
    send(topo, a, ETH_P_IP, ipv4(a.ipv4, r4, 17, udp(5000, PORT, m)))
    assert (at_c.count(), at_host.count()) == (0, 1)


# ---- VXLAN to the node ------------------------------------------------------------
def vxlan(vni: int, inner_frame: bytes) -> bytes:
    return struct.pack("!II", 0x08000000, vni << 8) + inner_frame


@pytest.fixture
def tunnel_port_datapath(topo, pin_root, tmp_path_factory):
    """A datapath whose tunnel port is a test port (a running agent's
    cilium_vxlan keeps 8472), with the abc containers."""
    port = 20000 + (os.getpid() + topo.octet) % 20000
    obj = compile_datapath(out_dir=tmp_path_factory.mktemp("tunport"))
    dp = Datapath.load(obj, pin_root=pin_root)
    try:
        yield dp, port, make_abc(topo, dp)
    finally:
        dp.close()


def test_vxlan_from_a_container_carries_no_identity(topo, tunnel_port_datapath):
    """In tunnel mode the node's VXLAN device (external) takes any datagram
    to its port and from-overlay takes the VNI for the sender's identity. A
    sends one to the host with B's identity as the VNI around IPv4 and IPv6
    datagrams as B to C (which admits only B): dropped in from-container, C
    gets nothing. Control: B's own datagram reaches C."""
    datapath, port, (a, b, c) = tunnel_port_datapath
    only_b_to_c(datapath, b, c)
    vx = f"dc{topo.run_id}vx"
    sh("ip", "link", "add", vx, "type", "vxlan", "external", "dstport", str(port), "nolearning")
    topo._record("link", vx)
    sh("ip", "link", "set", vx, "up")
    datapath.attach_overlay(int(open(f"/sys/class/net/{vx}/ifindex").read()), port)
    m = marker()
    at_c = topo.sniff(c, f"udp:{PORT}", m)
    inner = mac(c.node_mac) + mac(b.mac) + struct.pack("!H", ETH_P_IP) + ipv4(b.ipv4, c.ipv4, 17,
                                                                              udp(5000, PORT, m))
    inner6 = mac(c.node_mac) + mac(b.mac) + struct.pack("!H", ETH_P_IPV6) + ipv6(
        b.ipv6, c.ipv6, 17, udp6(b.ipv6, c.ipv6, 5000, PORT, m))
    invalid = drops(datapath, DROP_ENCAP_PROHIBITED)
    for frame in (inner, inner6):
        send(topo, a, ETH_P_IP, ipv4(a.ipv4, topo.router4, 17, udp(5000, port, vxlan(b.identity, frame))))
    send(topo, b, ETH_P_IP, ipv4(b.ipv4, c.ipv4, 17, udp(5000, PORT, m)))
    assert at_c.count() == 1
    assert drops(datapath, DROP_ENCAP_PROHIBITED) == invalid + 2
