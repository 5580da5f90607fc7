"""A frame from-container hands to a local endpoint (bpf_redirect_peer) is
routed as a router forwards it: the receiver's MAC as destination, its host
veth's as source, TTL / hop limit one lower and, for IPv4, a header checksum
that still adds up (lib/route.h). The kernel does not check the Ethernet
addresses of a frame redirected into a namespace, nor the TTL, so only a
capture in the receiver shows them. A frame whose TTL would expire is left to
the stack, which answers it with Time Exceeded (see conftest.py).
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess

import pytest

from tests.privileged.conftest import NETTOOL, PYTHON, Container

pytestmark = pytest.mark.privileged

OK = 0
ETHERTYPE = {4: "0800", 6: "86dd"}


def _udp(payload: bytes) -> bytes:
    """A UDP header (checksum 0) and payload: what the capture needs, before
    any socket would judge it."""
    return struct.pack("!HHHH", 40000, 9, 8 + len(payload), 0) + payload


def _capture(topo, c: Container, family: int, marker: bytes) -> subprocess.Popen:
    proc = subprocess.Popen(["ip", "netns", "exec", c.netns, PYTHON, str(NETTOOL), "capture",
                             ETHERTYPE[family], "eth0", marker.hex(), "3"], stdout=subprocess.PIPE, text=True)
    topo.sniffers.append(proc)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def _ipv4_header_sum(header: bytes) -> int:
    s = sum(struct.unpack("!10H", header))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


@pytest.mark.parametrize("family", [4, 6])
def test_local_delivery_is_routed(topo, datapath, abc, family):
    a, b, _ = abc
    marker = os.urandom(8)
    proc = _capture(topo, b, family, marker)
    dst = b.ipv4 if family == 4 else b.ipv6
    assert topo.run_tool(a, "rawip", dst, socket.IPPROTO_UDP, _udp(marker).hex(), "hops=64") == OK
    out, _ = proc.communicate(timeout=10)
    frame = bytes.fromhex(out.strip())
    assert frame, "the frame never reached the receiver"
    assert frame[0:6].hex(":") == b.mac and frame[6:12].hex(":") == b.node_mac
    if family == 4:
        assert frame[14 + 8] == 63  # TTL
        assert _ipv4_header_sum(frame[14:34]) == 0xFFFF, frame[14:34].hex()
    else:
        assert frame[14 + 7] == 63  # hop limit


@pytest.mark.parametrize("family", [4, 6])
def test_expiring_ttl_is_left_to_the_stack(topo, datapath, abc, family):
    a, b, _ = abc
    marker = os.urandom(8)
    receiver = _capture(topo, b, family, marker)
    errors = topo.sniff(a, "icmp4" if family == 4 else "icmp6", marker, seconds=2)
    dst = b.ipv4 if family == 4 else b.ipv6
    assert topo.run_tool(a, "rawip", dst, socket.IPPROTO_UDP, _udp(marker).hex(), "hops=1") == OK
    assert errors.count() == 1  # Time Exceeded, quoting the datagram
    out, _ = receiver.communicate(timeout=10)
    assert out.strip() == ""
