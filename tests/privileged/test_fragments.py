"""IP fragment tracking on the real kernel with crafted frames from a
container (AF_PACKET inside its namespace, see nettool.py sendframe).

* A first fragment records its datagram's ports in the shared LRU maps
  (cilium_ipv4_frag_datagrams / cilium_ipv6_frag_datagrams) only once it is
  forwarded: spoofed or policy-denied datagrams take no room there.
* A later fragment whose first fragment was not forwarded (never sent, or
  arriving after it) is dropped; an IPv6 atomic fragment is a whole
  datagram, under policy on its own ports and recorded nowhere.
* IPv6 later fragments are keyed on their Fragment header, so a datagram
  whose first fragment carries a Destination Options header after the
  Fragment header is delivered whole.
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
import random
import struct

import pytest

from docker_cilium.datapath.bpf import BpfMap
from docker_cilium.datapath.drop import (DROP_FRAG_NOT_FOUND, DROP_INVALID_SIP, DROP_POLICY,
                                         DROP_POLICY_L4)
from docker_cilium.datapath.maps.policymap import PolicyEntry
from tests.packets import (
    ETH_P_IP,
    ETH_P_IPV6,
    IPPROTO_DSTOPTS,
    IPPROTO_FRAGMENT,
    dstopts_padn,
    frag6,
    frame_from,
    ipv4,
    ipv6,
    marker,
    udp,
    udp6,
)

pytestmark = pytest.mark.privileged

OK = 0
PORT = 8080
# bpf_src/lib/common.h struct ipv4_frag_id / ipv6_frag_id / frag_l4ports
KEY4, KEY6, VALUE = ctypes.c_uint8 * 12, ctypes.c_uint8 * 40, ctypes.c_uint8 * 8


def frag_entries(dp, family: int) -> dict[tuple[str, str, int, int], tuple[int, int, int]]:
    """(saddr, daddr, id, key proto) -> (sport, dport, L4 proto) of one fragment map."""
    name, key = ("cilium_ipv4_frag_datagrams", KEY4) if family == 4 else ("cilium_ipv6_frag_datagrams", KEY6)
    m = BpfMap.open_pinned(os.path.join(dp.pin_root, name), key, VALUE)
    try:
        out = {}
        for k, v in m.items():
            k, v = bytes(k), bytes(v)
            if family == 4:
                d, s, ident, proto = k[0:4], k[4:8], struct.unpack("!H", k[8:10])[0], k[10]
            else:
                ident, proto, s, d = struct.unpack("!I", k[0:4])[0], k[4], k[8:24], k[24:40]
            sport, dport = struct.unpack("!HH", v[:4])
            out[(str(ipaddress.ip_address(s)), str(ipaddress.ip_address(d)), ident, proto)] = (sport, dport, v[4])
        return out
    finally:
        m.close()


def first_fragment(family: int, src: str, dst: str, ident: int, m: bytes) -> tuple[bytes, bytes]:
    """(ethertype, packet): the first 32 bytes of a larger UDP datagram to PORT."""
    data = m + b"x" * (24 - len(m))
    if family == 4:
        return struct.pack("!H", ETH_P_IP), ipv4(src, dst, 17, udp(5000, PORT, data), ident=ident, frag=0x2000)
    return struct.pack("!H", ETH_P_IPV6), ipv6(src, dst, IPPROTO_FRAGMENT,
                                               frag6(17, 0, True, ident, udp6(src, dst, 5000, PORT, data)))


def drops(dp, reason: int) -> int:
    return dp.maps.metrics.count(reason)


@pytest.mark.parametrize("family", [4, 6])
def test_only_forwarded_first_fragments_are_recorded(topo, datapath, abc, family):
    """A's first fragments with a spoofed source and to a peer whose policy
    denies A are dropped and leave no entry; the allowed one leaves its own."""
    a, b, c = abc
    addr = (lambda x: x.ipv4) if family == 4 else (lambda x: x.ipv6)
    maps = datapath.maps
    maps.endpoints.upsert(b.endpoint(ingress=True))
    maps.policy.set_endpoint_policy(b.lxc_id, [PolicyEntry(a.identity, "ingress", PORT, "udp")])
    maps.endpoints.upsert(c.endpoint(ingress=True))
    maps.policy.set_endpoint_policy(c.lxc_id, [])
    allowed, spoofed, denied = random.sample(range(1, 0xFFFF), 3)
    sip, policy = drops(datapath, DROP_INVALID_SIP), drops(datapath, DROP_POLICY)
    for src, dst, ident in ((addr(a), addr(b), allowed), (addr(c), addr(b), spoofed),
                            (addr(a), addr(c), denied)):
        ethertype, pkt = first_fragment(family, src, dst, ident, marker())
        assert topo.run_tool(a, "sendframe", frame_from(a, ethertype, pkt)) == OK
    assert drops(datapath, DROP_INVALID_SIP) >= sip + 1
    assert drops(datapath, DROP_POLICY) >= policy + 1
    assert frag_entries(datapath, family) == {(addr(a), addr(b), allowed, 17): (5000, PORT, 17)}


def test_ipv6_later_fragment_after_destination_options(topo, datapath, abc):
    """Fragment header, then Destination Options, then UDP: the later
    fragment (which only has the Fragment header) finds the first one's
    ports and protocol and B, allowing only A on udp/PORT, gets the datagram.
    Control: the same datagram without the options header."""
    a, b, c = abc
    maps = datapath.maps
    maps.endpoints.upsert(b.endpoint(ingress=True))
    maps.policy.set_endpoint_policy(b.lxc_id, [PolicyEntry(a.identity, "ingress", PORT, "udp")])
    ethertype = struct.pack("!H", ETH_P_IPV6)
    for options in (False, True):
        m = marker()
        data = b"x" * 32 + m + b"x" * 16      # the later fragment starts inside the x's
        dgram = udp6(a.ipv6, b.ipv6, 5000, PORT, data)
        nexthdr = 17
        if options:
            dgram, nexthdr = dstopts_padn(17) + dgram, IPPROTO_DSTOPTS
        cut, ident = 48, random.randrange(1, 1 << 32)
        seen = topo.sniff(b, f"udp:{PORT}", m)
        for off, more in ((0, True), (cut, False)):
            part = dgram[:cut] if off == 0 else dgram[cut:]
            pkt = ipv6(a.ipv6, b.ipv6, IPPROTO_FRAGMENT, frag6(nexthdr, off, more, ident, part))
            assert topo.run_tool(a, "sendframe", frame_from(a, ethertype, pkt)) == OK
        assert seen.count() == 1, f"options header after the Fragment header: {options}"
        assert frag_entries(datapath, 6)[(a.ipv6, b.ipv6, ident, nexthdr)] == (5000, PORT, 17)


def split_datagram(family: int, src: str, dst: str, m: bytes) -> tuple[bytes, list[bytes]]:
    """(ethertype, [first fragment, later fragment]) of one UDP datagram to
    PORT carrying m, cut 24 bytes into the UDP header + payload."""
    data = b"x" * 32 + m + b"x" * 16
    ident, cut = random.randrange(1, 0xFFFF), 24
    if family == 4:
        dgram = udp(5000, PORT, data)
        return struct.pack("!H", ETH_P_IP), [
            ipv4(src, dst, 17, dgram[:cut], ident=ident, frag=0x2000),
            ipv4(src, dst, 17, dgram[cut:], ident=ident, frag=cut // 8)]
    dgram = udp6(src, dst, 5000, PORT, data)
    return struct.pack("!H", ETH_P_IPV6), [
        ipv6(src, dst, IPPROTO_FRAGMENT, frag6(17, 0, True, ident, dgram[:cut])),
        ipv6(src, dst, IPPROTO_FRAGMENT, frag6(17, cut, False, ident, dgram[cut:]))]


@pytest.mark.parametrize("family", [4, 6])
def test_later_fragment_before_its_first_is_dropped(topo, datapath, abc, family):
    """A's later fragment sent before its first one (out of order, or a first
    fragment never seen) is dropped as FRAG_NOT_FOUND and B gets nothing;
    the same later fragment after the first one completes the datagram
    (control: the pair is deliverable)."""
    a, b, c = abc
    addr = (lambda x: x.ipv4) if family == 4 else (lambda x: x.ipv6)
    m = marker()
    ethertype, (first, later) = split_datagram(family, addr(a), addr(b), m)
    before = drops(datapath, DROP_FRAG_NOT_FOUND)
    seen = topo.sniff(b, f"udp:{PORT}", m)
    for pkt in (later, first):
        assert topo.run_tool(a, "sendframe", frame_from(a, ethertype, pkt)) == OK
    assert drops(datapath, DROP_FRAG_NOT_FOUND) == before + 1
    assert seen.count() == 0
    seen = topo.sniff(b, f"udp:{PORT}", m)
    for pkt in (first, later):
        assert topo.run_tool(a, "sendframe", frame_from(a, ethertype, pkt)) == OK
    assert seen.count() == 1
    assert drops(datapath, DROP_FRAG_NOT_FOUND) == before + 1


def test_ipv6_atomic_fragment_is_a_whole_datagram(topo, datapath, abc):
    """A Fragment header with offset 0 and M clear (RFC 6946): B, allowing A
    only on udp/PORT, gets the datagram to PORT and policy drops the one to
    PORT + 1 (its ports were read, not taken for a fragment's); neither is
    recorded in the fragment map."""
    a, b, c = abc
    maps = datapath.maps
    maps.endpoints.upsert(b.endpoint(ingress=True))
    maps.policy.set_endpoint_policy(b.lxc_id, [PolicyEntry(a.identity, "ingress", PORT, "udp")])
    ethertype = struct.pack("!H", ETH_P_IPV6)
    policy = drops(datapath, DROP_POLICY_L4)     # A allowed, on another port
    m = marker()
    seen = topo.sniff(b, f"udp:{PORT}", m)
    for port in (PORT, PORT + 1):
        pkt = ipv6(a.ipv6, b.ipv6, IPPROTO_FRAGMENT,
                   frag6(17, 0, False, random.randrange(1, 1 << 32),
                         udp6(a.ipv6, b.ipv6, 5000, port, m)))
        assert topo.run_tool(a, "sendframe", frame_from(a, ethertype, pkt)) == OK
    assert seen.count() == 1
    assert drops(datapath, DROP_POLICY_L4) == policy + 1
    assert frag_entries(datapath, 6) == {}
