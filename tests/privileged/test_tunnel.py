"""Tunnel mode on the real kernel: cilium_tunnel_map through TunnelMap, the
cilium_vxlan device, and real packets through VXLAN between two "nodes".

The packet test: this (root) namespace is node A, running the datapath with
container ``a`` and an external VXLAN device (a test name and UDP port, so a
cilium_vxlan of a running agent is not touched); namespace ``nodeB`` is the
other node, joined by a veth "underlay", with its own external VXLAN device
and the "remote endpoint" addresses on lo. nodeB answers through ``ip route
... encap ip id <VNI>`` (the kernel's lightweight tunnel), so the VNI it
sends is what the test says; a raw socket on nodeB's underlay reads the VNI
node A sent.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys

import pytest

from docker_cilium.datapath.drop import DROP_ENCAP_PROHIBITED, DROP_POLICY, DROP_UNKNOWN_SENDER
from docker_cilium.datapath.maps.policymap import PolicyEntry
from docker_cilium.datapath.maps.tunnel import TUNNEL_MAP, TunnelMap
from docker_cilium.identity import reserved
from tests.privileged.conftest import sh

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Read VXLAN packets to PORT on IFNAME for SECONDS: print the VNIs seen, then
# the outer source addresses.
VNI_SNIFF = r"""
import socket, struct, sys, time, select
ifname, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800))
s.bind((ifname, 0x0800))
print("ready", flush=True)
vnis, srcs, end = set(), set(), time.time() + seconds
while time.time() < end:
    r, _, _ = select.select([s], [], [], max(0, end - time.time()))
    if not r:
        continue
    f = s.recv(65535)
    ihl = (f[14] & 0xF) * 4
    if f[23] != 17:
        continue
    udp = 14 + ihl
    if struct.unpack("!H", f[udp + 2:udp + 4])[0] != port:
        continue
    vnis.add(int.from_bytes(f[udp + 12:udp + 15], "big"))
    srcs.add(socket.inet_ntoa(f[26:30]))
print(" ".join(map(str, sorted(vnis))), flush=True)
print(" ".join(sorted(srcs)), flush=True)
"""


def test_tunnel_map_upsert_dump_delete(datapath):
    """TunnelMap against the pinned LPM trie: both families, replace, delete
    (absent: no error), bad input refused."""
    tm = datapath.maps.tunnel
    assert isinstance(tm, TunnelMap) and tm.dump() == {}
    tm.upsert("10.71.0.0/16", "192.168.7.2")
    tm.upsert("f00d::a47:0:0:0/96", "192.168.7.2")
    tm.upsert("10.72.0.5/16", "192.168.7.3")  # host bits: the network is stored
    tm.upsert("10.71.0.0/16", "192.168.7.4")  # replaces
    assert tm.dump() == {"10.71.0.0/16": "192.168.7.4", "f00d::a47:0:0:0/96": "192.168.7.2",
                         "10.72.0.0/16": "192.168.7.3"}
    tm.delete("10.72.0.0/16")
    tm.delete("10.72.0.0/16")
    tm.delete("10.99.0.0/16")
    assert set(tm.dump()) == {"10.71.0.0/16", "f00d::a47:0:0:0/96"}
    with pytest.raises(ValueError):
        tm.upsert("10.73.0.0/16", "fd00::1")
    with pytest.raises(ValueError):
        tm.upsert("not-a-cidr", "192.168.7.2")
    # the kernel's own view: bpftool reads the same pin
    out = sh("bpftool", "map", "show", "pinned", os.path.join(datapath.pin_root, TUNNEL_MAP)).stdout
    assert "lpm_trie" in out and "key 24B  value 8B" in out


def test_vxlan_device_in_a_netns():
    """ensure_device makes an external (collect_metadata) VXLAN on 8472 without
    learning, up, with the MTU and rp_filter 0; a second call keeps it; a
    device of that name with other settings is replaced; remove deletes it."""
    ns = f"dctest-{os.getpid()}-vx{os.urandom(2).hex()}-dev"
    sh("ip", "netns", "add", ns)
    try:
        def run(code: str) -> str:
            return sh("ip", "netns", "exec", ns, sys.executable, "-c",
                      "from docker_cilium.datapath import tunnel\n" + code).stdout.strip().splitlines()[-1]
        sh("ip", "netns", "exec", ns, "ip", "link", "add", "cilium_vxlan", "type", "vxlan", "id", "5",
           "dstport", "4789")  # an earlier, different device of that name
        first = run("print(tunnel.ensure_device(1350))")
        settings = run("print(tunnel.device_settings())")
        assert "'mtu': 1350" in settings and "'port': 8472" in settings and "'external': True" in settings
        assert "'learning': 0" in settings and "'up': True" in settings
        assert run("print(tunnel.ensure_device(1350))") == first
        detail = sh("ip", "netns", "exec", ns, "ip", "-d", "link", "show", "cilium_vxlan").stdout
        assert "external" in detail and "dstport 8472" in detail and "nolearning" in detail
        assert sh("ip", "netns", "exec", ns, "cat", "/proc/sys/net/ipv4/conf/cilium_vxlan/rp_filter"
                  ).stdout.strip() == "0"
        assert run("print(tunnel.remove_device(), tunnel.remove_device(), tunnel.device_settings())") \
            == "True False None"
    finally:
        sh("ip", "netns", "del", ns, check=False)


@pytest.fixture
def two_nodes(topo, datapath):
    """Node A (here): container a + external VXLAN dc<run>vx with from-overlay;
    nodeB: underlay peer, external VXLAN, remote endpoint addresses on lo."""
    a = topo.add_container("a", 2, 11, 1001)
    datapath.attach(a.ifindex)
    datapath.maps.endpoints.upsert(a.endpoint(ingress=True))
    o = topo.octet
    port = 20000 + (os.getpid() + o) % 20000
    under_a, under_b = f"10.199.{o}.101", f"10.199.{o}.102"
    remote4, remote6 = f"10.198.{o}.5", f"fd98::{o:x}:5"
    vx, ul = f"dc{topo.run_id}vx", f"dc{topo.run_id}u"
    nb = f"dctest-{os.getpid()}-{topo.run_id}-nodeb"
    sh("ip", "netns", "add", nb)
    topo._record("netns", nb)
    nbe = ("ip", "netns", "exec", nb)
    sh("ip", "link", "add", ul, "type", "veth", "peer", "name", f"{ul}p")
    topo._record("link", ul)
    sh("ip", "link", "set", f"{ul}p", "netns", nb)
    sh("ip", "addr", "add", under_a, "peer", under_b, "dev", ul)
    sh("ip", "link", "set", ul, "up")
    sh(*nbe, "ip", "link", "set", f"{ul}p", "name", "eth0")
    sh(*nbe, "ip", "link", "set", "lo", "up")
    sh(*nbe, "ip", "link", "set", "eth0", "up")
    sh(*nbe, "ip", "addr", "add", under_b, "peer", under_a, "dev", "eth0")
    sh(*nbe, "ip", "addr", "add", f"{remote4}/32", "dev", "lo")
    sh(*nbe, "ip", "-6", "addr", "add", f"{remote6}/128", "dev", "lo")
    # nodeB's VXLAN takes the inner frames addressed to a's host veth MAC
    # (what from-container leaves in them) as its own
    sh(*nbe, "ip", "link", "add", "vx0", "address", a.node_mac, "type", "vxlan", "external",
       "dstport", str(port), "nolearning")
    sh(*nbe, "ip", "link", "set", "vx0", "up")
    for f, addr in (("-4", a.ipv4), ("-6", a.ipv6)):
        sh(*nbe, "ip", f, "neigh", "add", addr, "lladdr", a.node_mac, "dev", "vx0", "nud", "permanent")
    sh("ip", "link", "add", vx, "type", "vxlan", "external", "dstport", str(port), "nolearning")
    topo._record("link", vx)
    sh("ip", "link", "set", vx, "up")
    vx_index = int(open(f"/sys/class/net/{vx}/ifindex").read())
    datapath.attach_overlay(vx_index, port)
    # nodeB is a node of the cluster (the node handler's entry)
    datapath.maps.ipcache.upsert(f"{under_b}/32", reserved.REMOTE_NODE)
    datapath.maps.tunnel.upsert(f"10.198.{o}.0/24", under_b)
    datapath.maps.tunnel.upsert(f"fd98::{o:x}:0/112", under_b)
    topo.wait_ready()

    def reply_vni(vni: int) -> None:
        """nodeB sends (answers) to a with VNI ``vni``."""
        for f, addr in (("-4", a.ipv4), ("-6", a.ipv6)):
            sh(*nbe, "ip", f, "route", "replace", addr, "encap", "ip", "id", str(vni), "dst", under_a,
               "dev", "vx0")
    return {"a": a, "nb": nb, "port": port, "under_b": under_b, "ul": ul, "remote4": remote4, "remote6": remote6, "reply_vni": reply_vni,
            "vx_index": vx_index}


def _sniff_vnis(nb: str, port: int, seconds: float) -> subprocess.Popen:
    p = subprocess.Popen(["ip", "netns", "exec", nb, sys.executable, "-c", VNI_SNIFF, "eth0", str(port),
                          str(seconds)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    return p


def _sniffed(p: subprocess.Popen) -> tuple[list[str], list[str]]:
    """(VNIs, outer sources) a _sniff_vnis saw."""
    out, _ = p.communicate(timeout=30)
    lines = out.splitlines()
    return lines[0].split(), lines[1].split()


def test_vxlan_carries_the_identity_both_ways(topo, datapath, two_nodes):
    """a -> nodeB's addresses (IPv4 and IPv6) is encapsulated with a's identity
    as the VNI; nodeB's packets to a are admitted by a's ingress policy by the
    VNI's identity (allowed: 1 seen as remote-node; another: dropped)."""
    n = two_nodes
    a = n["a"]
    assert datapath.maps.config.get().tunnel_ifindex == n["vx_index"]
    datapath.maps.policy.set_endpoint_policy(a.lxc_id, [PolicyEntry(reserved.REMOTE_NODE)])
    n["reply_vni"](reserved.HOST)  # nodeB's host: remote-node here
    sniff = _sniff_vnis(n["nb"], n["port"], 4)
    assert topo.ping(a, n["remote4"], timeout=2), "IPv4 through the tunnel"
    assert topo.ping(a, n["remote6"], timeout=2), "IPv6 through the tunnel"
    vnis, _ = _sniffed(sniff)
    assert vnis == [str(a.identity)], f"VNIs sent: {vnis!r}"
    # a new flow from nodeB: ingress policy by the tunnel key's identity
    nbe = ("ip", "netns", "exec", n["nb"])

    def nodeb_ping(addr: str, src: str) -> bool:
        return subprocess.run([*nbe, sys.executable, topo.tool, "ping", addr, "timeout=1.5", f"src={src}"],
                              capture_output=True, timeout=20).returncode == 0
    assert nodeb_ping(a.ipv4, n["remote4"]) and nodeb_ping(a.ipv6, n["remote6"])
    n["reply_vni"](4242)
    drops_before = _policy_drops(datapath)
    assert not nodeb_ping(a.ipv4, n["remote4"]) and not nodeb_ping(a.ipv6, n["remote6"])
    assert _policy_drops(datapath) >= drops_before + 2
    datapath.maps.policy.set_endpoint_policy(a.lxc_id, [PolicyEntry(reserved.REMOTE_NODE), PolicyEntry(4242)])
    assert nodeb_ping(a.ipv4, n["remote4"]) and nodeb_ping(a.ipv6, n["remote6"])


def _policy_drops(datapath) -> int:
    return datapath.maps.metrics.count(DROP_POLICY)


def test_cilium_host_up_without_arp_in_a_netns():
    """cilium_host comes up with NOARP: the routes to other nodes' ranges go
    through a gateway that is its own address, which no neighbour answers;
    without ARP the frames reach to-overlay at once. Also when it is new."""
    ns = f"dctest-{os.getpid()}-vx{os.urandom(2).hex()}-host"
    sh("ip", "netns", "add", ns)
    try:
        code = ("import asyncio\nfrom docker_cilium.datapath.link import LinkManager\n"
                "async def main():\n    links = LinkManager()\n"
                "    await links.ensure_host_device('10.9.0.1', None, 1450)\n    await links.close()\n"
                "asyncio.run(main())\n")
        for _ in range(2):  # created, then kept
            sh("ip", "netns", "exec", ns, sys.executable, "-c", code)
            flags = sh("ip", "netns", "exec", ns, "ip", "-o", "link", "show", "cilium_host").stdout
            assert "NOARP" in flags and ",UP," in flags and "mtu 1450" in flags, flags
    finally:
        sh("ip", "netns", "del", ns, check=False)


def _vxlan_datagram(port: int, vni: int, inner_dmac: str) -> str:
    """UDP to ``port`` (checksum 0) carrying a VXLAN header with ``vni`` and an
    inner Ethernet/IPv4 frame (an ICMP echo for 10.0.0.1): what a container
    would send to speak for an identity of its choice."""
    inner_ip = bytes.fromhex("4500001c00000000400100000a0000020a000001") + bytes.fromhex("0800f7ff00000000")
    frame = bytes.fromhex(inner_dmac.replace(":", "")) + bytes.fromhex("020000000001") + b"\x08\x00" + inner_ip
    payload = bytes([0x08, 0, 0, 0]) + vni.to_bytes(3, "big") + b"\0" + frame
    return (struct.pack("!HHHH", 40000, port, 8 + len(payload), 0) + payload).hex()


def test_container_cannot_send_vxlan_with_a_forged_identity(topo, datapath, two_nodes):
    """A container's own UDP to the tunnel port (a VXLAN header with the VNI it
    likes) never leaves: the receiving node would take the VNI for the
    sender's identity (Cilium's DROP_ENCAP_PROHIBITED). Its other UDP to the
    same node passes."""
    n = two_nodes
    a = n["a"]
    under_b = n["under_b"]
    drops_before = datapath.maps.metrics.count(DROP_ENCAP_PROHIBITED)
    sniff = _sniff_vnis(n["nb"], n["port"], 3)
    assert topo.run_tool(a, "rawip", under_b, 17, _vxlan_datagram(n["port"], 4242, a.node_mac), "count=3") == 0
    vnis, _ = _sniffed(sniff)
    assert "4242" not in vnis, f"nodeB received the forged VNI: {vnis!r}"
    dropped = datapath.maps.metrics.count(DROP_ENCAP_PROHIBITED)
    assert dropped >= drops_before + 3
    # the same datagram to another port is not the tunnel's: not dropped for it
    assert topo.run_tool(a, "rawip", under_b, 17, _vxlan_datagram(n["port"] + 1, 4242, a.node_mac)) == 0
    assert datapath.maps.metrics.count(DROP_ENCAP_PROHIBITED) == dropped


def test_vxlan_from_an_unknown_sender_is_dropped(topo, datapath, two_nodes):
    """A VXLAN packet whose outer source is no node of the cluster (no
    reserved:remote-node ipcache entry: a host on the underlay, a container
    of another Docker network sending to this host's tunnel port) is dropped
    in from-overlay, whatever identity its VNI names; once the address is a
    node's, the same packets are admitted by that VNI."""
    n = two_nodes
    a = n["a"]
    datapath.maps.policy.set_endpoint_policy(a.lxc_id, [PolicyEntry(reserved.REMOTE_NODE)])
    n["reply_vni"](reserved.HOST)
    nbe = ("ip", "netns", "exec", n["nb"])

    def nodeb_ping(addr: str, src: str) -> bool:
        return subprocess.run([*nbe, sys.executable, topo.tool, "ping", addr, "timeout=1.5", f"src={src}"],
                              capture_output=True, timeout=20).returncode == 0
    assert datapath.maps.ipcache.delete(f"{n['under_b']}/32")
    before = datapath.maps.metrics.count(DROP_UNKNOWN_SENDER)
    assert not nodeb_ping(a.ipv4, n["remote4"]) and not nodeb_ping(a.ipv6, n["remote6"])
    assert datapath.maps.metrics.count(DROP_UNKNOWN_SENDER) >= before + 2
    # a world-identity entry (what an unknown address falls back to) is no node either
    datapath.maps.ipcache.upsert(f"{n['under_b']}/32", reserved.WORLD)
    assert not nodeb_ping(a.ipv4, n["remote4"])
    datapath.maps.ipcache.upsert(f"{n['under_b']}/32", reserved.REMOTE_NODE)
    assert nodeb_ping(a.ipv4, n["remote4"]) and nodeb_ping(a.ipv6, n["remote6"])


def test_vxlan_leaves_from_the_node_address(topo, datapath, two_nodes):
    """The outer source is the node's own IPv4 (what the others admit tunnel
    packets from), not whichever address the route to the peer prefers: here
    a second address of the underlay link, given as the node IP."""
    n = two_nodes
    a = n["a"]
    node_ip = f"10.199.{topo.octet}.103"
    sh("ip", "addr", "add", f"{node_ip}/32", "dev", n["ul"])  # goes with the link
    datapath.attach_overlay(n["vx_index"], n["port"], node_ip)
    n["reply_vni"](reserved.HOST)
    sniff = _sniff_vnis(n["nb"], n["port"], 3)
    assert topo.ping(a, n["remote4"], timeout=2) and topo.ping(a, n["remote6"], timeout=2)
    vnis, sources = _sniffed(sniff)
    assert vnis == [str(a.identity)] and sources == [node_ip], (vnis, sources)
