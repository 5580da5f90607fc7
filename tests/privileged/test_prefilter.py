"""The XDP prefilter on a real device: a veth whose other end sits in a test
namespace (standing in for the outside), never the machine's uplink.

Traffic from the namespace reaches the host; with the namespace's prefix in
the deny trie it no longer does (the drop is counted in cilium_metrics as
Policy denied (CIDR), ingress); with the prefix gone it does again. Native
(veth driver XDP) and generic mode, IPv4 and IPv6, tagged frames, moving the
prefilter to another device, removal, and a foreign program left alone.
"""

from __future__ import annotations

import ipaddress
import os
import random
import socket
import struct

import pytest

from docker_cilium.datapath import xdp
from docker_cilium.datapath.drop import DROP_POLICY_CIDR
from docker_cilium.datapath.loader import compile_datapath
from docker_cilium.datapath.maps.metricsmap import METRIC_INGRESS
from tests.outside import Outside
from tests.privileged.conftest import sh


@pytest.fixture
def outside():
    o = Outside("a")
    try:
        yield o
    finally:
        o.cleanup()
    assert self_leaks(o) == []


@pytest.fixture
def outside2():
    o = Outside("b")
    try:
        yield o
    finally:
        o.cleanup()


def self_leaks(o: Outside) -> list[str]:
    links = sh("ip", "-o", "link", "show").stdout
    return [o.host_if] if o.host_if in links else []


@pytest.fixture(scope="session")
def xdp_object(tmp_path_factory):
    return compile_datapath(out_dir=tmp_path_factory.mktemp("xdpobj"), source=xdp.XDP_SOURCE)


@pytest.fixture
def prefilter(datapath, xdp_object):
    """install(device, mode) with the test's pin root; everything removed after."""
    prog_dir = datapath.prog_dir

    def install(device: str, mode: str) -> xdp.Attached:
        return xdp.install(str(xdp_object), datapath.pin_root, prog_dir, device, mode)

    yield install
    xdp.remove(prog_dir)


def net(text: str):
    return ipaddress.ip_network(text, strict=False)


@pytest.mark.parametrize("mode", ["native", "generic"])
def test_prefilter_drops_then_restores(datapath, prefilter, outside, mode):
    tries = datapath.maps.prefilter
    metrics = datapath.maps.metrics
    assert outside.ping(outside.host4) and outside.ping(outside.host6), "no path before the prefilter"
    attached = prefilter(outside.host_if, mode)
    assert xdp.query(attached.ifindex) == [attached] and attached.mode == mode
    assert outside.ping(outside.host4) and outside.ping(outside.host6), "an empty deny list dropped traffic"

    before = metrics.count(DROP_POLICY_CIDR, METRIC_INGRESS)
    tries.insert(net(f"{outside.ns4}/30"))
    assert not outside.ping(outside.host4), "IPv4 source in a denied /30 got through"
    assert outside.ping(outside.host6), "IPv6 dropped by an IPv4 prefix"
    tries.insert(net(f"{outside.ns6}/64"))
    assert not outside.ping(outside.host6), "IPv6 source in a denied /64 got through"
    assert metrics.count(DROP_POLICY_CIDR, METRIC_INGRESS) >= before + 2

    assert tries.delete(net(f"{outside.ns4}/30")) and tries.delete(net(f"{outside.ns6}/64"))
    assert outside.ping(outside.host4) and outside.ping(outside.host6), "traffic not restored"
    assert tries.dump() == []


def test_longest_prefix_and_other_sources(datapath, prefilter, outside):
    """A /32 of another address does not match; a covering /8 does."""
    prefilter(outside.host_if, "generic")
    tries = datapath.maps.prefilter
    tries.insert(net(f"{outside.host4}/32"))  # the destination, not a source
    assert outside.ping(outside.host4)
    tries.insert(net("10.0.0.0/8"))
    assert not outside.ping(outside.host4)
    assert sorted(map(str, tries.dump())) == sorted(["10.0.0.0/8", f"{outside.host4}/32"])


def _ipv4_frame(dst_mac: bytes, src_mac: bytes, src: str, dst: str, tags: list[int]) -> bytes:
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28, 1, 0, 64, 17, 0, socket.inet_aton(src), socket.inet_aton(dst))
    l2 = dst_mac + src_mac
    for tpid in tags:
        l2 += struct.pack("!HH", tpid, 5)
    return l2 + struct.pack("!H", 0x0800) + hdr + struct.pack("!HHHH", 4000, 4001, 8, 0)


def test_tagged_frames_are_looked_through(datapath, prefilter, outside):
    """A denied source inside one or two VLAN tags is dropped by the prefilter too."""
    prefilter(outside.host_if, "native")
    datapath.maps.prefilter.insert(net(f"{outside.ns4}/32"))
    host_mac, ns_mac = outside.macs()
    metrics = datapath.maps.metrics
    for tags in ([], [0x8100], [0x88A8, 0x8100]):
        before = metrics.count(DROP_POLICY_CIDR, METRIC_INGRESS)
        outside.send_frame(_ipv4_frame(host_mac, ns_mac, outside.ns4, outside.host4, tags), count=5)
        assert metrics.count(DROP_POLICY_CIDR, METRIC_INGRESS) == before + 5, f"tags {tags}"


def test_moves_to_the_new_device_and_is_removed(datapath, prefilter, outside, outside2):
    first = prefilter(outside.host_if, "native")
    second = prefilter(outside2.host_if, "generic")
    assert xdp.query(first.ifindex) == [], "the old device kept the prefilter"
    assert xdp.query(second.ifindex) == [second]
    assert xdp.pinned_id(datapath.prog_dir) == second.prog_id
    removed = xdp.remove(datapath.prog_dir)
    assert removed == [second] and xdp.query(second.ifindex) == []
    assert xdp.pinned_id(datapath.prog_dir) is None


def test_foreign_program_is_not_replaced(datapath, prefilter, outside, tmp_path):
    """A device already running someone else's XDP program is refused, and the program stays."""
    src = tmp_path / "other.c"
    src.write_text('#include <linux/bpf.h>\n#include <bpf/bpf_helpers.h>\n'
                   'SEC("xdp") int other_prog(struct xdp_md *ctx) { return XDP_PASS; }\n'
                   'char _license[] SEC("license") = "GPL";\n')
    obj = tmp_path / "other.o"
    sh("clang", "-O2", "-target", "bpf", "-idirafter", "/usr/include/x86_64-linux-gnu", "-c", str(src), "-o", str(obj))
    sh("ip", "link", "set", "dev", outside.host_if, "xdpgeneric", "obj", str(obj), "sec", "xdp")
    with pytest.raises(xdp.XDPError, match="which is not the prefilter"):
        prefilter(outside.host_if, "generic")
    (other,) = xdp.query(socket.if_nametoindex(outside.host_if))
    assert xdp.prog_name(other.prog_id) == "other_prog"
    sh("ip", "link", "set", "dev", outside.host_if, "xdpgeneric", "off")


def test_missing_device_is_a_clear_error(datapath, prefilter):
    with pytest.raises(xdp.XDPError, match="prefilter device 'nosuchdev0' does not exist"):
        prefilter("nosuchdev0", "native")


def test_cleanup_finds_and_detaches_only_our_prefilter(datapath, datapath_object, xdp_object, prefilter, outside,
                                                       outside2):
    """`cilium cleanup` for this pin root takes its prefilter off and unpins it; a
    prefilter of another bpf root (another agent's) stays where it is."""
    from docker_cilium import defaults
    from docker_cilium.datapath import cleanup as host
    from docker_cilium.datapath.loader import Datapath, unpin_all

    bpf_root = defaults.bpf_root_of(datapath.pin_root)
    ours = prefilter(outside.host_if, "native")
    other_base = os.path.join(defaults.BPFFS_ROOT, f"dctest-{os.getpid()}-{random.randrange(1 << 30):x}")
    other_dp = Datapath.load(datapath_object, pin_root=defaults.bpf_pin_root(other_base))
    try:
        theirs = xdp.install(str(xdp_object), other_dp.pin_root, other_dp.prog_dir, outside2.host_if, "generic")
        traces = host.find(bpf_root)
        assert traces.xdp_programs == [ours]
        assert any(p.endswith("/" + xdp.XDP_PROGRAM) for p in traces.pins)
        assert "XDP programs" in "".join(traces.describe())
        pin = os.path.join(datapath.prog_dir, xdp.XDP_PROGRAM)
        done, errors = host.remove(host.HostTraces(xdp_programs=traces.xdp_programs, pins=[pin]))
        assert errors == [] and done == [f"removed XDP program from {outside.host_if}", f"removed {pin}"]
        assert xdp.query(ours.ifindex) == [] and xdp.query(theirs.ifindex) == [theirs]
    finally:
        xdp.remove(other_dp.prog_dir)
        other_dp.close()
        unpin_all(other_dp.pin_root)
        for dirpath, _dirs, files in os.walk(other_base, topdown=False):
            for f in files:
                os.unlink(os.path.join(dirpath, f))
            os.rmdir(dirpath)


def test_mode_change_on_the_same_device(datapath, prefilter, outside):
    """The kernel refuses native and generic at once: the old mode's program is taken off first."""
    native = prefilter(outside.host_if, "native")
    generic = prefilter(outside.host_if, "generic")
    assert xdp.query(native.ifindex) == [generic]
    datapath.maps.prefilter.insert(net(f"{outside.ns4}/32"))
    assert not outside.ping(outside.host4)
