"""Packet builders for crafted frames (stdlib only): the privileged tests send
them, the monitor's unit tests and bench/monitor_rate.py decode them.

The Internet checksum is nettool's (the helper the namespaces run), so the
frames the tests build and the packets nettool sends agree on it."""

from __future__ import annotations

import random
import socket
import struct

from tests.privileged.nettool import csum

ETH_P_IP, ETH_P_ARP, ETH_P_IPV6, ETH_P_8021Q = 0x0800, 0x0806, 0x86DD, 0x8100
IPPROTO_FRAGMENT, IPPROTO_DSTOPTS = 44, 60


def marker() -> bytes:
    return b"dcmark-" + random.randbytes(6).hex().encode()


def mac(s: str) -> bytes:
    return bytes.fromhex(s.replace(":", ""))


def ip4(a: str) -> bytes:
    return socket.inet_aton(a)


def ip6(a: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6, a)


def ipv4(src: str, dst: str, proto: int, payload: bytes, ident: int = 0x1234,
         frag: int = 0) -> bytes:
    """frag: the flags + offset field (0x2000 = more fragments; offset in 8-byte units)."""
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), ident, frag, 64, proto, 0,
                      ip4(src), ip4(dst))
    return hdr[:10] + struct.pack("!H", csum(hdr)) + hdr[12:] + payload


def ipv6(src: str, dst: str, nexthdr: int, payload: bytes) -> bytes:
    return struct.pack("!IHBB", 6 << 28, len(payload), nexthdr, 64) + ip6(src) + ip6(dst) + payload


def udp(sport: int, dport: int, payload: bytes) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload  # no checksum


def udp6(src: str, dst: str, sport: int, dport: int, payload: bytes) -> bytes:
    """UDP over IPv6, with the checksum IPv6 requires (pseudo-header)."""
    length = 8 + len(payload)
    pseudo = ip6(src) + ip6(dst) + struct.pack("!IxxxB", length, 17)
    seg = struct.pack("!HHHH", sport, dport, length, 0) + payload
    return seg[:6] + struct.pack("!H", csum(pseudo + seg) or 0xFFFF) + seg[8:]


def frag6(nexthdr: int, offset: int, more: bool, ident: int, data: bytes) -> bytes:
    """An IPv6 Fragment header (offset in bytes, a multiple of 8) and its data."""
    return struct.pack("!BBHI", nexthdr, 0, offset | int(more), ident) + data


def dstopts_padn(nexthdr: int) -> bytes:
    """An 8-byte Destination Options header holding only padding (PadN)."""
    return struct.pack("!BBBB4x", nexthdr, 0, 1, 4)


def vlan(tags: int, ethertype: int) -> bytes:
    """tags x 802.1Q VLAN 0 (priority) tag, then the inner ethertype."""
    return b"".join(struct.pack("!HH", ETH_P_8021Q, 0) for _ in range(tags)) + \
        struct.pack("!H", ethertype)


def eth(dst: bytes, src: bytes, ethertype: int, payload: bytes) -> bytes:
    return dst + src + struct.pack("!H", ethertype) + payload


def echo_request(ident: int = 1, seq: int = 1) -> bytes:
    """ICMPv4 echo request header (checksum left 0: decoders don't check it)."""
    return struct.pack("!BBHHH", 8, 0, 0, ident, seq)


def frame_from(c, ethertype_and_tags: bytes, payload: bytes) -> str:
    """Hex of a frame from container c to its host veth."""
    return (mac(c.node_mac) + mac(c.mac) + ethertype_and_tags + payload).hex()


def arp(op: int, sha: str, spa: str, tpa: str) -> bytes:
    return struct.pack("!HHBBH6s4s6s4s", 1, ETH_P_IP, 6, 4, op, mac(sha), ip4(spa),
                       b"\0" * 6, ip4(tpa))
