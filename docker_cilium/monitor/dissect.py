"""Packet headers of the bytes a datapath event captured (an Ethernet frame,
truncated): what `cilium monitor` prints as the connection summary and what a
flow view needs (addresses, ports, TCP flags, ICMP type). Pure functions, no
dependencies: the agent runs them for every event it streams."""

from __future__ import annotations

import ipaddress
import struct
from typing import Any

ETH_P_IP, ETH_P_IPV6, ETH_P_ARP = 0x0800, 0x86DD, 0x0806
ETH_P_8021Q, ETH_P_8021AD = 0x8100, 0x88A8  # VLAN tags: 4 bytes before the real ethertype
PROTO_ICMP, PROTO_TCP, PROTO_UDP, PROTO_ICMPV6 = 1, 6, 17, 58
PROTO_IPV6_FRAGMENT = 44
IP4_OFFSET_MASK = 0x1FFF
PROTO_NAMES = {PROTO_ICMP: "ICMPv4", PROTO_TCP: "TCP", PROTO_UDP: "UDP", PROTO_ICMPV6: "ICMPv6"}

# gopacket's ICMP type names, as Cilium's connection summary shows them.
ICMP4_TYPES = {0: "EchoReply", 3: "DestinationUnreachable", 5: "Redirect", 8: "EchoRequest",
               11: "TimeExceeded", 12: "ParameterProblem"}
ICMP6_TYPES = {1: "DestinationUnreachable", 2: "PacketTooBig", 3: "TimeExceeded", 4: "ParameterProblem",
               128: "EchoRequest", 129: "EchoReply", 133: "RouterSolicitation", 134: "RouterAdvertisement",
               135: "NeighborSolicitation", 136: "NeighborAdvertisement"}
TCP_FLAGS = (("SYN", 0x02), ("ACK", 0x10), ("RST", 0x04), ("FIN", 0x01), ("PSH", 0x08), ("URG", 0x20))


def _mac(b: bytes) -> str:
    return ":".join(f"{x:02x}" for x in b)


def dissect(frame: bytes) -> dict[str, Any]:
    """Decoded layers of ``frame``: ``l2``/``l3``/``l4`` as {src, dst} (Cilium's
    DissectSummary), ``ipVersion``, ``protocol`` and per-protocol details.
    Layers the capture cut off are absent, never guessed: a fragment after
    the first has no L4 header. VLAN tags are skipped (``vlan``: the inner ID)."""
    out: dict[str, Any] = {}
    if len(frame) < 14:
        return out
    ethertype = struct.unpack_from("!H", frame, 12)[0]
    out["l2"] = {"src": _mac(frame[6:12]), "dst": _mac(frame[0:6])}
    off = 14
    while ethertype in (ETH_P_8021Q, ETH_P_8021AD) and len(frame) >= off + 4:
        out["vlan"] = struct.unpack_from("!H", frame, off)[0] & 0x0FFF  # the innermost tag's ID
        ethertype = struct.unpack_from("!H", frame, off + 2)[0]
        off += 4
    out["ethertype"] = ethertype
    ip = frame[off:]
    l4: bytes | None = None  # None: no L4 header here (a later fragment, a bad header length)
    if ethertype == ETH_P_IP and len(ip) >= 20:
        ihl = (ip[0] & 0x0F) * 4
        proto = ip[9]
        out["ipVersion"] = 4
        out["l3"] = {"src": str(ipaddress.IPv4Address(ip[12:16])), "dst": str(ipaddress.IPv4Address(ip[16:20]))}
        out["ttl"] = ip[8]
        if ihl >= 20 and not struct.unpack_from("!H", ip, 6)[0] & IP4_OFFSET_MASK:
            l4 = ip[ihl:]
    elif ethertype == ETH_P_IPV6 and len(ip) >= 40:
        proto = ip[6]
        out["ipVersion"] = 6
        out["l3"] = {"src": str(ipaddress.IPv6Address(ip[8:24])), "dst": str(ipaddress.IPv6Address(ip[24:40]))}
        out["ttl"] = ip[7]
        l4 = ip[40:]
        if proto == PROTO_IPV6_FRAGMENT and len(l4) >= 8:
            proto, l4 = l4[0], (l4[8:] if not struct.unpack_from("!H", l4, 2)[0] >> 3 else None)
    else:
        return out
    out["protocol"] = PROTO_NAMES.get(proto, str(proto))
    out["proto"] = proto
    if l4 is None:
        return out
    if proto in (PROTO_TCP, PROTO_UDP) and len(l4) >= 4:
        sport, dport = struct.unpack_from("!HH", l4, 0)
        out["l4"] = {"src": str(sport), "dst": str(dport)}
        if proto == PROTO_TCP and len(l4) >= 14:
            out["tcpFlags"] = [name for name, bit in TCP_FLAGS if l4[13] & bit]
    elif proto in (PROTO_ICMP, PROTO_ICMPV6) and len(l4) >= 2:
        names = ICMP4_TYPES if proto == PROTO_ICMP else ICMP6_TYPES
        out["icmp"] = {"type": l4[0], "code": l4[1], "name": names.get(l4[0], f"Type{l4[0]}")}
    return out


def _join(host: str, port: str) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def connection_summary(d: dict[str, Any]) -> str:
    """Cilium's GetConnectionSummary: ``1.1.1.1:2000 -> 2.2.2.2:80 tcp SYN``,
    ``1.1.1.1 -> 2.2.2.2 EchoRequest``, or the MACs for non-IP frames."""
    l3 = d.get("l3")
    if l3 and "icmp" in d:
        return f"{l3['src']} -> {l3['dst']} {d['icmp']['name']}"
    if l3 and "l4" in d:
        proto = d["protocol"].lower()
        s = f"{_join(l3['src'], d['l4']['src'])} -> {_join(l3['dst'], d['l4']['dst'])} {proto}"
        if "tcpFlags" in d:
            s += " " + ", ".join(f for f in d["tcpFlags"] if f in ("SYN", "ACK", "RST", "FIN"))
        return s
    if l3:
        return f"{l3['src']} -> {l3['dst']}"
    if "l2" in d:
        return f"{d['l2']['src']} -> {d['l2']['dst']} {_ethertype_name(d['ethertype'])}"
    return "[unknown]"


def _ethertype_name(t: int) -> str:
    return {ETH_P_IP: "IPv4", ETH_P_IPV6: "IPv6", ETH_P_ARP: "ARP"}.get(t, f"0x{t:04x}")


def layers_text(d: dict[str, Any]) -> list[str]:
    """One line per decoded layer (what ``cilium monitor -v`` prints under an event)."""
    lines = []
    if "l2" in d:
        lines.append(f"Ethernet\t{{SrcMAC={d['l2']['src']} DstMAC={d['l2']['dst']} "
                     f"EthernetType={_ethertype_name(d['ethertype'])}}}")
    if "l3" in d:
        lines.append(f"IPv{d['ipVersion']}\t{{SrcIP={d['l3']['src']} DstIP={d['l3']['dst']} "
                     f"Protocol={d.get('protocol', '')} TTL={d.get('ttl', '')}}}")
    if "l4" in d:
        flags = " ".join(f"{f}=true" for f in d.get("tcpFlags", []))
        lines.append(f"{d['protocol']}\t{{SrcPort={d['l4']['src']} DstPort={d['l4']['dst']}"
                     + (f" {flags}" if flags else "") + "}")
    if "icmp" in d:
        lines.append(f"{d['protocol']}\t{{TypeCode={d['icmp']['name']} Code={d['icmp']['code']}}}")
    return lines


def hexdump(data: bytes) -> list[str]:
    """``hexdump -C`` lines (Go's hex.Dump), what ``--hex`` prints."""
    lines = []
    for off in range(0, len(data), 16):
        chunk = data[off:off + 16]
        hexes = " ".join(f"{b:02x}" for b in chunk[:8]) + "  " + " ".join(f"{b:02x}" for b in chunk[8:])
        text = "".join(chr(b) if 32 <= b < 127 else "." for b in chunk)
        lines.append(f"{off:08x}  {hexes:<48}  |{text}|")
    return lines
