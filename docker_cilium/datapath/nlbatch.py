"""An endpoint's fixed rtnetlink requests, packed by hand and sent as one batch.

Attaching an endpoint's programs is three requests (the clsact qdisc, then a
``bpf`` filter per direction, ``tc filter replace ... bpf da fd N``); its
host routes and proxy NDP entries are up to four more. pyroute2 builds each
through its generic request machinery, about a millisecond of Python apiece
on the endpoint's critical path; these messages are fixed layouts, so they
are packed here with ``struct`` and sent in one ``send``: the kernel handles
them in order and acknowledges each.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
from dataclasses import dataclass

NETLINK_ROUTE = 0
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
RTM_NEWROUTE, RTM_DELROUTE = 24, 25
RTM_NEWNEIGH = 28
RTM_NEWQDISC = 36
RTM_NEWTFILTER = 44
NLMSG_ERROR = 2
NLM_F_REQUEST, NLM_F_ACK = 0x1, 0x4
NLM_F_REPLACE, NLM_F_EXCL, NLM_F_CREATE = 0x100, 0x200, 0x400
TCA_KIND, TCA_OPTIONS = 1, 2
TCA_BPF_CLASSID, TCA_BPF_FD, TCA_BPF_NAME, TCA_BPF_FLAGS = 3, 6, 7, 8
TCA_BPF_FLAG_ACT_DIRECT = 1
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_LINKINFO = 1, 3, 4, 18
IFLA_INFO_KIND, IFLA_INFO_DATA, VETH_INFO_PEER = 1, 2, 1
IFF_UP = 0x1
RTA_DST, RTA_OIF, RTA_PREFSRC = 1, 4, 7
RT_TABLE_MAIN, RTPROT_STATIC, RTN_UNICAST, RT_SCOPE_NOWHERE = 254, 4, 1, 255
NDA_DST = 1
NUD_PERMANENT, NTF_PROXY = 0x80, 0x08
TC_H_CLSACT = 0xFFFFFFF1
CLSACT_HANDLE = 0xFFFF0000

_HDR = struct.Struct("=IHHII")  # nlmsghdr
_IFINFO = struct.Struct("=BxHiII")  # family, type, index, flags, change
_TCMSG = struct.Struct("=BxxxiIII")  # family, ifindex, handle, parent, info
_RTMSG = struct.Struct("=BBBBBBBBI")  # family, dst_len, src_len, tos, table, protocol, scope, type, flags
_NDMSG = struct.Struct("=BxxxiHBB")  # family, ifindex, state, flags, type


class RequestError(OSError):
    """A request of the batch the kernel refused; ``errno`` is its error."""


@dataclass(frozen=True)
class BpfFilter:
    """``tc filter replace dev IFINDEX parent PARENT prio PRIO handle HANDLE
    protocol PROTO bpf da fd FD name NAME classid 1``."""

    parent: int
    fd: int
    name: str
    prio: int
    handle: int
    protocol: int


def _attr(kind: int, payload: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(payload), kind) + payload
    return raw + b"\0" * (-len(raw) % 4)


@dataclass(frozen=True)
class Request:
    """One message of a batch (without its header) and what to call it in an error."""

    kind: int
    flags: int
    body: bytes
    what: str
    tolerate: tuple[int, ...] = ()  # errnos that count as done (EEXIST: already there)


def _ip(addr: str) -> tuple[int, bytes]:
    ip = ipaddress.ip_address(addr)
    return (socket.AF_INET if ip.version == 4 else socket.AF_INET6), ip.packed


def clsact_request(ifindex: int) -> Request:
    tcm = _TCMSG.pack(socket.AF_UNSPEC, ifindex, CLSACT_HANDLE, TC_H_CLSACT, 0)
    return Request(RTM_NEWQDISC, NLM_F_EXCL | NLM_F_CREATE, tcm + _attr(TCA_KIND, b"clsact\0"),
                   f"tc clsact qdisc on ifindex {ifindex}", (errno.EEXIST,))


def route_request(dst: str, ifindex: int, scope: int, prefsrc: str | None) -> Request:
    """``ip route replace DST/32|128 dev IFINDEX scope SCOPE [src PREFSRC] proto static``."""
    family, packed = _ip(dst)
    rtm = _RTMSG.pack(family, len(packed) * 8, 0, 0, RT_TABLE_MAIN, RTPROT_STATIC, scope, RTN_UNICAST, 0)
    attrs = _attr(RTA_DST, packed) + _attr(RTA_OIF, struct.pack("=I", ifindex))
    if prefsrc:
        attrs += _attr(RTA_PREFSRC, _ip(prefsrc)[1])
    return Request(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE, rtm + attrs, f"route {dst} on ifindex {ifindex}")


def del_route_request(dst: str) -> Request:
    """``ip route del DST/32|128`` from the main table (gone already is fine)."""
    family, packed = _ip(dst)
    rtm = _RTMSG.pack(family, len(packed) * 8, 0, 0, RT_TABLE_MAIN, 0, RT_SCOPE_NOWHERE, 0, 0)
    return Request(RTM_DELROUTE, 0, rtm + _attr(RTA_DST, packed), f"delete route {dst}",
                   (errno.ESRCH, errno.ENOENT))


def proxy_neigh_request(dst: str, ifindex: int) -> Request:
    """``ip neigh add proxy DST dev IFINDEX`` (already there is fine)."""
    family, packed = _ip(dst)
    ndm = _NDMSG.pack(family, ifindex, NUD_PERMANENT, NTF_PROXY, 0)
    return Request(RTM_NEWNEIGH, NLM_F_CREATE | NLM_F_EXCL, ndm + _attr(NDA_DST, packed),
                   f"proxy neighbour {dst} on ifindex {ifindex}", (errno.EEXIST,))


def filter_request(ifindex: int, f: BpfFilter) -> Request:
    info = (f.prio << 16) | socket.htons(f.protocol)
    tcm = _TCMSG.pack(socket.AF_UNSPEC, ifindex, f.handle, f.parent, info)
    options = (_attr(TCA_BPF_CLASSID, struct.pack("=I", 1)) + _attr(TCA_BPF_FD, struct.pack("=I", f.fd))
               + _attr(TCA_BPF_NAME, f.name.encode() + b"\0")
               + _attr(TCA_BPF_FLAGS, struct.pack("=I", TCA_BPF_FLAG_ACT_DIRECT)))
    attrs = _attr(TCA_KIND, b"bpf\0") + _attr(TCA_OPTIONS, options)
    return Request(RTM_NEWTFILTER, NLM_F_CREATE | NLM_F_REPLACE, tcm + attrs,
                   f"tc bpf filter {f.name} on ifindex {ifindex}")


class Batcher:
    """One rtnetlink socket (not thread-safe: one worker thread owns it)."""

    def __init__(self) -> None:
        self._sock: socket.socket | None = None
        self._seq = 0

    def _socket(self) -> socket.socket:
        if self._sock is None:
            s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE)
            s.bind((0, 0))
            self._sock = s
        return self._sock

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def send(self, requests: list[Request]) -> list[bytes]:
        """Every request in one send; raises RequestError for the first one
        refused (the kernel still handled the others). Returns each request's
        reply message (empty for those only acknowledged)."""
        first = self._seq + 1
        self._seq += len(requests)
        msgs = []
        for i, r in enumerate(requests):
            msgs.append(_HDR.pack(_HDR.size + len(r.body), r.kind, NLM_F_REQUEST | NLM_F_ACK | r.flags, first + i, 0))
            msgs.append(r.body)
        sock = self._socket()
        sock.send(b"".join(msgs))
        replies: dict[int, bytes] = {}
        errors = self._acks(sock, range(first, first + len(requests)), replies)
        for seq, code in sorted(errors.items()):
            req = requests[seq - first]
            if code and code not in req.tolerate:
                raise RequestError(code, f"{req.what}: {os.strerror(code)}")
        return [replies.get(seq, b"") for seq in range(first, first + len(requests))]

    def attach(self, ifindex: int, filters: list[BpfFilter]) -> None:
        """The clsact qdisc (already there is fine) and every filter."""
        self.send([clsact_request(ifindex), *(filter_request(ifindex, f) for f in filters)])

    @staticmethod
    def _acks(sock: socket.socket, seqs: range, replies: dict[int, bytes]) -> dict[int, int]:
        """The error code of each request (0: acknowledged), read until all
        are in; a request's reply message (a get's) goes into ``replies``."""
        out: dict[int, int] = {}
        while len(out) < len(seqs):
            data = sock.recv(65536)
            off = 0
            while off + _HDR.size <= len(data):
                length, kind, _, seq, _ = _HDR.unpack_from(data, off)
                if length < _HDR.size:
                    break
                if seq in seqs:
                    if kind == NLMSG_ERROR:
                        out[seq] = -struct.unpack_from("=i", data, off + _HDR.size)[0]
                    else:
                        replies[seq] = data[off + _HDR.size:off + length]
                off += (length + 3) & ~3
        return out


def veth_request(name: str, mtu: int, peer: str, peer_mac: str) -> Request:
    """``ip link add NAME mtu MTU up type veth peer name PEER address MAC mtu MTU``."""
    mtu_b = struct.pack("=I", mtu)
    peer_msg = (_IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + _attr(IFLA_IFNAME, peer.encode() + b"\0")
                + _attr(IFLA_ADDRESS, bytes.fromhex(peer_mac.replace(":", ""))) + _attr(IFLA_MTU, mtu_b))
    info = _attr(IFLA_INFO_KIND, b"veth\0") + _attr(IFLA_INFO_DATA, _attr(VETH_INFO_PEER, peer_msg))
    body = (_IFINFO.pack(socket.AF_UNSPEC, 0, 0, IFF_UP, IFF_UP) + _attr(IFLA_IFNAME, name.encode() + b"\0")
            + _attr(IFLA_MTU, mtu_b) + _attr(IFLA_LINKINFO, info))
    return Request(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, body, f"veth {name}")


def link_down_request(name: str) -> Request:
    """``ip link set NAME down``: no traffic passes a veth whose side is down."""
    body = _IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, IFF_UP) + _attr(IFLA_IFNAME, name.encode() + b"\0")
    return Request(RTM_NEWLINK, 0, body, f"link {name} down")


def del_link_request(index: int) -> Request:
    """``ip link del`` by index (gone already is fine)."""
    return Request(RTM_DELLINK, 0, _IFINFO.pack(socket.AF_UNSPEC, 0, index, 0, 0), f"delete ifindex {index}",
                   (errno.ENODEV,))


def get_link_request(name: str) -> Request:
    body = _IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + _attr(IFLA_IFNAME, name.encode() + b"\0")
    return Request(RTM_GETLINK, 0, body, f"link {name}")


def link_index_and_mac(reply: bytes) -> tuple[int, str]:
    """Ifindex and MAC of an RTM_NEWLINK reply (a get's)."""
    _, _, index, _, _ = _IFINFO.unpack_from(reply, 0)
    off = _IFINFO.size
    while off + 4 <= len(reply):
        length, kind = struct.unpack_from("=HH", reply, off)
        if length < 4:
            break
        if kind & 0x3FFF == IFLA_ADDRESS:
            return index, reply[off + 4:off + length].hex(":")
        off += (length + 3) & ~3
    return index, ""
