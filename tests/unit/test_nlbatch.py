"""The hand-packed rtnetlink requests decode, with pyroute2's own message
classes, to the requests pyroute2 sent before (same kinds, flags, fields)."""

from __future__ import annotations

import socket
import struct

from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.ndmsg import ndmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg
from pyroute2.netlink.rtnl.tcmsg import tcmsg

from docker_cilium.datapath import nlbatch
from docker_cilium.datapath.nlbatch import BpfFilter


def _decode(cls, req: nlbatch.Request):
    raw = struct.pack("=IHHII", 16 + len(req.body), req.kind, 1 | 4 | req.flags, 7, 0) + req.body
    msg = cls(raw)
    msg.decode()
    return msg


def test_route_request_is_a_replace_of_a_host_route_with_its_source():
    msg = _decode(rtmsg, nlbatch.route_request("10.15.0.9", 42, 253, "10.15.0.1"))
    assert msg["header"]["type"] == nlbatch.RTM_NEWROUTE
    assert msg["header"]["flags"] & (nlbatch.NLM_F_CREATE | nlbatch.NLM_F_REPLACE) == 0x500
    assert (msg["family"], msg["dst_len"], msg["scope"], msg["table"]) == (socket.AF_INET, 32, 253, 254)
    assert msg.get_attr("RTA_DST") == "10.15.0.9" and msg.get_attr("RTA_OIF") == 42
    assert msg.get_attr("RTA_PREFSRC") == "10.15.0.1"
    v6 = _decode(rtmsg, nlbatch.route_request("f00d::a0f:0:0:9", 42, 0, None))
    assert (v6["family"], v6["dst_len"], v6.get_attr("RTA_DST"), v6.get_attr("RTA_PREFSRC")) == (
        socket.AF_INET6, 128, "f00d::a0f:0:0:9", None)


def test_del_route_request_names_the_host_route_and_tolerates_its_absence():
    req = nlbatch.del_route_request("f00d::9")
    msg = _decode(rtmsg, req)
    assert msg["header"]["type"] == nlbatch.RTM_DELROUTE
    assert (msg["dst_len"], msg.get_attr("RTA_DST"), msg["table"]) == (128, "f00d::9", 254)
    assert set(req.tolerate) == {3, 2}  # ESRCH, ENOENT


def test_proxy_neigh_request_is_an_ndp_proxy_entry():
    msg = _decode(ndmsg, nlbatch.proxy_neigh_request("f00d::1", 7))
    assert msg["header"]["type"] == nlbatch.RTM_NEWNEIGH
    assert (msg["ifindex"], msg["flags"], msg.get_attr("NDA_DST")) == (7, nlbatch.NTF_PROXY, "f00d::1")


def test_veth_request_carries_both_sides():
    msg = _decode(ifinfmsg, nlbatch.veth_request("lxc0123456789ab", 1400, "tmp0123456789ab", "02:11:22:33:44:55"))
    assert msg["header"]["type"] == nlbatch.RTM_NEWLINK and msg["flags"] & 1 and msg["change"] & 1
    assert msg.get_attr("IFLA_IFNAME") == "lxc0123456789ab" and msg.get_attr("IFLA_MTU") == 1400
    info = msg.get_attr("IFLA_LINKINFO")
    assert info.get_attr("IFLA_INFO_KIND") == "veth"
    peer = info.get_attr("IFLA_INFO_DATA").get_attr("VETH_INFO_PEER")
    assert peer.get_attr("IFLA_IFNAME") == "tmp0123456789ab"
    assert peer.get_attr("IFLA_ADDRESS") == "02:11:22:33:44:55" and peer.get_attr("IFLA_MTU") == 1400


def test_filter_request_is_a_direct_action_bpf_filter():
    f = BpfFilter(parent=0xFFFFFFF2, fd=9, name="bpf_lxc.o:[from_container]", prio=1, handle=1, protocol=3)
    msg = _decode(tcmsg, nlbatch.filter_request(12, f))
    assert msg["header"]["type"] == nlbatch.RTM_NEWTFILTER
    assert (msg["index"], msg["handle"], msg["parent"]) == (12, 1, 0xFFFFFFF2)
    assert msg["info"] == (1 << 16) | socket.htons(3)
    assert msg.get_attr("TCA_KIND") == "bpf"
    opts = msg.get_attr("TCA_OPTIONS")
    assert opts.get_attr("TCA_BPF_FD") == 9 and opts.get_attr("TCA_BPF_NAME") == "bpf_lxc.o:[from_container]"
    assert opts.get_attr("TCA_BPF_FLAGS") == 1 and opts.get_attr("TCA_BPF_CLASSID") == 1


def test_link_index_and_mac_read_a_get_reply():
    reply = (struct.pack("=BxHiII", 0, 1, 77, 1, 0) + nlbatch._attr(nlbatch.IFLA_IFNAME, b"lxc\0")
             + nlbatch._attr(nlbatch.IFLA_ADDRESS, bytes.fromhex("aabbccddeeff")))
    assert nlbatch.link_index_and_mac(reply) == (77, "aa:bb:cc:dd:ee:ff")
