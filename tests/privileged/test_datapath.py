"""The BPF datapath on the real kernel with real packets (see conftest.py)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time

import pytest

from docker_cilium.datapath.drop import DROP_INVALID_SIP as DROP_SIP
from docker_cilium.datapath.drop import DROP_INVALID_SMAC as DROP_SMAC
from docker_cilium.datapath.drop import DROP_POLICY as DROP_L3
from docker_cilium.datapath.drop import DROP_POLICY_L4 as DROP_L4
from docker_cilium.datapath.loader import Datapath
from docker_cilium.datapath.maps.ctmap import monotonic_seconds
from docker_cilium.datapath.maps.eventsmap import NOTIFY_DROP
from docker_cilium.datapath.maps.metricsmap import METRIC_EGRESS, METRIC_INGRESS
from docker_cilium.datapath.maps.policymap import PolicyEntry
from docker_cilium.datapath.maps.registry import DatapathMaps
from docker_cilium.identity.reserved import HOST as IDENTITY_HOST

pytestmark = pytest.mark.privileged

OK, TIMEOUT = 0, 2


def drops(dp, reason):
    return dp.maps.metrics.count(reason)


def test_connectivity_without_enforcement(topo, datapath, abc):
    a, b, c = abc
    topo.serve(b, 8080)
    assert topo.ping(a, b.ipv4)
    assert topo.ping(b, a.ipv4)
    assert topo.ping(a, b.ipv6)
    assert topo.ping(b, a.ipv6)
    assert topo.ping(c, b.ipv4)
    assert topo.tcp(a, b.ipv4, 8080) == OK
    assert topo.tcp(a, b.ipv6, 8080) == OK
    assert topo.udp(a, b.ipv4, 8080) == OK
    assert topo.udp(a, b.ipv6, 8080) == OK
    # A -> B is delivered by bpf_redirect_peer() straight into B's netns: it
    # never goes out through B's host veth (whose tx counter stays still)
    tx_path = f"/sys/class/net/{b.host_if}/statistics/tx_packets"
    tx_before = int(open(tx_path).read())
    for _ in range(10):
        assert topo.ping(a, b.ipv4)
    assert int(open(tx_path).read()) - tx_before < 5
    # host <-> container through the stack (to-container path)
    assert topo.ping(None, a.ipv4)
    assert topo.ping(None, a.ipv6)
    assert topo.tcp(None, b.ipv4, 8080) == OK
    assert topo.ping(a, topo.router4)
    m = datapath.maps.metrics.dump()
    assert m[(0, METRIC_EGRESS)][0] > 0 and m[(0, METRIC_INGRESS)][0] > 0
    assert not any(r for (r, _d) in m if r != 0), m
    # conntrack entries exist for the flows, flush removes them
    ct = datapath.maps.ct
    entries = ct.dump()
    assert any(e.saddr == a.ipv4 and e.daddr == b.ipv4 and e.dport == 8080 and e.proto == 6
               for e in entries)
    assert any(e.saddr == a.ipv6 and e.daddr == b.ipv6 and e.dport == 8080 and e.proto == 17
               for e in entries)
    assert all(e.lifetime > monotonic_seconds() for e in entries)
    assert ct.flush() == len(entries)
    assert ct.dump() == []


def test_ingress_policy_l4(topo, datapath, abc):
    a, b, c = abc
    maps = datapath.maps
    topo.serve(b, 8080, 8081)
    topo.serve(a, 9000)
    maps.endpoints.upsert(b.endpoint(ingress=True))
    entry = PolicyEntry(identity=a.identity, direction="ingress", dport=8080, proto="tcp")
    maps.policy.set_endpoint_policy(b.lxc_id, [entry])
    maps.ct.flush()

    assert topo.tcp(a, b.ipv4, 8080) == OK
    assert topo.tcp(a, b.ipv6, 8080) == OK
    l3_before, l4_before = drops(datapath, DROP_L3), drops(datapath, DROP_L4)
    assert topo.tcp(c, b.ipv4, 8080) == TIMEOUT            # other identity: L3 deny
    assert drops(datapath, DROP_L3) > l3_before
    assert topo.tcp(a, b.ipv4, 8081) == TIMEOUT            # same identity, other port: L4
    assert drops(datapath, DROP_L4) > l4_before
    assert topo.udp(a, b.ipv4, 8080) == TIMEOUT            # other protocol
    assert not topo.ping(a, b.ipv4)                         # L4-only policy: no ICMP
    assert not topo.ping(a, b.ipv6)
    assert not topo.ping(None, b.ipv4)                      # host has no entry
    # B-initiated connections: replies from A pass thanks to conntrack
    assert topo.tcp(b, a.ipv4, 9000) == OK
    assert topo.tcp(b, a.ipv6, 9000) == OK
    assert topo.ping(b, a.ipv4)
    # counters of the allowing entry
    st = maps.policy.get(b.lxc_id, entry)
    # every forward packet of the two allowed connections (SYN, ACK, data, FIN...)
    assert st is not None and st.packets >= 6 and st.bytes > 300, st
    dumped = maps.policy.dump(b.lxc_id)
    assert [(s.identity, s.dport, s.proto) for s in dumped] == [(a.identity, 8080, 6)]

    # L3-only entry for C: everything from C, including ICMP
    entries = [entry, PolicyEntry(identity=c.identity, direction="ingress")]
    added, deleted = maps.policy.set_endpoint_policy(b.lxc_id, entries)
    assert (added, deleted) == (1, 0)
    assert maps.policy.get(b.lxc_id, entry).packets == st.packets  # counters kept
    assert topo.ping(c, b.ipv4) and topo.ping(c, b.ipv6)
    assert topo.tcp(c, b.ipv4, 8081) == OK
    # removing C again: new connections from C are denied
    assert maps.policy.set_endpoint_policy(b.lxc_id, [entry]) == (0, 1)
    maps.ct.flush()
    assert topo.tcp(c, b.ipv4, 8081) == TIMEOUT
    # any-identity port entry
    maps.policy.set_endpoint_policy(b.lxc_id, [PolicyEntry(0, "ingress", 8081, "tcp")])
    assert topo.tcp(c, b.ipv4, 8081) == OK
    assert topo.tcp(c, b.ipv4, 8080) == TIMEOUT
    # enforcement off again: all allowed
    maps.endpoints.upsert(b.endpoint(ingress=False))
    assert topo.tcp(c, b.ipv4, 8080) == OK


def test_antispoofing(topo, datapath, abc):
    a, b, c = abc
    spoof4 = f"{topo.prefix4}.50"
    spoof6 = f"{topo.prefix6}50"
    os.system(f"ip netns exec {a.netns} ip addr add {spoof4}/32 dev eth0")
    os.system(f"ip netns exec {a.netns} ip -6 addr add {spoof6}/128 dev eth0 nodad")
    before = drops(datapath, DROP_SIP)
    assert topo.ping(a, b.ipv4)
    assert not topo.ping(a, b.ipv4, from_addr=spoof4)
    assert not topo.ping(a, b.ipv6, from_addr=spoof6)
    assert not topo.ping(a, topo.router4, from_addr=spoof4)  # also towards the host
    assert drops(datapath, DROP_SIP) >= before + 3
    # forged source MAC
    before = drops(datapath, DROP_SMAC)
    os.system(f"ip netns exec {a.netns} ip link set eth0 address 02:00:00:00:00:99")
    assert not topo.ping(a, b.ipv4)
    assert drops(datapath, DROP_SMAC) > before
    os.system(f"ip netns exec {a.netns} ip link set eth0 address {a.mac}")
    assert topo.ping(a, b.ipv4)


def test_host_identity_via_ipcache(topo, datapath, abc):
    a, b, c = abc
    maps = datapath.maps
    topo.serve(a, 8080)
    maps.endpoints.upsert(a.endpoint(ingress=True))
    maps.policy.set_endpoint_policy(a.lxc_id, [PolicyEntry(b.identity, "ingress")])
    maps.ct.flush()
    assert not topo.ping(None, a.ipv4)
    assert topo.tcp(None, a.ipv4, 8080) == TIMEOUT
    assert not topo.ping(None, a.ipv6)
    maps.policy.set_endpoint_policy(a.lxc_id, [PolicyEntry(b.identity, "ingress"),
                                               PolicyEntry(IDENTITY_HOST, "ingress")])
    assert topo.ping(None, a.ipv4)
    assert topo.ping(None, a.ipv6)
    assert topo.tcp(None, a.ipv4, 8080) == OK
    assert any(e.src_sec_id == IDENTITY_HOST and e.daddr == a.ipv4 for e in maps.ct.dump())
    # without the ipcache entry the router address is "world"
    maps.ipcache.delete(f"{topo.router4}/32")
    maps.ct.flush()
    assert not topo.ping(None, a.ipv4)
    maps.policy.set_endpoint_policy(a.lxc_id, [PolicyEntry(2, "ingress")])
    assert topo.ping(None, a.ipv4)
    assert f"{topo.router6}/128" in maps.ipcache.dump()


def test_egress_policy(topo, datapath, abc):
    a, b, c = abc
    maps = datapath.maps
    topo.serve(b, 8080, 8081)
    topo.serve(c, 8080)
    maps.endpoints.upsert(a.endpoint(egress=True))
    maps.policy.set_endpoint_policy(a.lxc_id, [PolicyEntry(b.identity, "egress", 8080, "tcp")])
    maps.ct.flush()
    assert topo.tcp(a, b.ipv4, 8080) == OK
    assert topo.tcp(a, b.ipv6, 8080) == OK
    before4 = drops(datapath, DROP_L4)
    assert topo.tcp(a, b.ipv4, 8081) == TIMEOUT
    assert drops(datapath, DROP_L4) > before4
    before3 = drops(datapath, DROP_L3)
    assert topo.tcp(a, c.ipv4, 8080) == TIMEOUT
    assert not topo.ping(a, topo.router4)          # host not allowed
    assert drops(datapath, DROP_L3) >= before3 + 2
    # incoming connections to A still work (egress only)
    topo.serve(a, 9000)
    assert topo.tcp(c, a.ipv4, 9000) == OK
    maps.policy.set_endpoint_policy(a.lxc_id, [PolicyEntry(b.identity, "egress", 8080, "tcp"),
                                               PolicyEntry(IDENTITY_HOST, "egress")])
    assert topo.ping(a, topo.router4)


def test_ct_gc(topo, datapath, abc):
    a, b, c = abc
    assert topo.ping(a, b.ipv4)
    ct = datapath.maps.ct
    n = len(ct.dump())
    assert n >= 1
    assert ct.gc() == 0
    assert ct.gc(now=monotonic_seconds() + 61) == n     # non-TCP lifetime 60 s
    assert ct.dump() == []


def test_maps_persist_across_agent_restart(topo, datapath_object, pin_root, abc, datapath):
    a, b, c = abc
    topo.serve(b, 8080)
    maps = datapath.maps
    maps.endpoints.upsert(b.endpoint(ingress=True))
    maps.policy.set_endpoint_policy(b.lxc_id, [PolicyEntry(a.identity, "ingress", 8080, "tcp")])
    maps.ct.flush()
    datapath.close()   # "agent dies": fds closed, nothing detached or unpinned
    assert topo.tcp(a, b.ipv4, 8080) == OK
    assert topo.tcp(c, b.ipv4, 8080) == TIMEOUT
    # the CLI / a restarted agent opens the maps by path
    ro = DatapathMaps.open(pin_root)
    try:
        assert [s.identity for s in ro.policy.dump(b.lxc_id)] == [a.identity]
        assert ro.metrics.count(DROP_L3) >= 1
    finally:
        ro.close()
    # a restarted agent loads the object again: pinned maps are reused
    dp2 = Datapath.load(datapath_object, pin_root=pin_root)
    try:
        assert dp2.maps.endpoints.get(b.ifindex).ingress_enforced
        assert len(dp2.maps.endpoints.dump()) == 3
        assert [s.identity for s in dp2.maps.policy.dump(b.lxc_id)] == [a.identity]
        assert dp2.maps.ct.dump()  # the connection above is tracked
        t0 = time.perf_counter()
        for x in abc:
            dp2.attach(x.ifindex)                      # idempotent re-attach
        print(f"\n[timing] re-attach 3 endpoints {(time.perf_counter() - t0) * 1000:.1f} ms")
        assert dp2.attached(b.ifindex) == {"ingress": True, "egress": True}
        dp2.maps.policy.set_endpoint_policy(
            b.lxc_id, [PolicyEntry(a.identity, "ingress", 8080, "tcp"),
                       PolicyEntry(c.identity, "ingress", 8080, "tcp")])
        assert topo.tcp(c, b.ipv4, 8080) == OK
    finally:
        dp2.close()
    # or without loading anything: pinned programs
    dp3 = Datapath.from_pinned(pin_root)
    try:
        dp3.attach(c.ifindex)
        assert topo.ping(c, a.ipv4)
    finally:
        dp3.close()


async def test_attach_from_asyncio(topo, datapath):
    x = topo.add_container("x", 9, 19, 1009)
    ms = await datapath.attach_async(x.ifindex)
    ms2 = await datapath.attach_async(x.ifindex)      # idempotent
    t0 = time.perf_counter()
    datapath.maps.endpoints.upsert(x.endpoint())
    upsert_ms = (time.perf_counter() - t0) * 1000
    print(f"\n[timing] attach {ms:.1f} ms, re-attach {ms2:.1f} ms, endpoint upsert "
          f"{upsert_ms:.2f} ms")
    assert datapath.attached(x.ifindex) == {"ingress": True, "egress": True}
    await datapath.detach_async(x.ifindex)
    assert datapath.attached(x.ifindex) == {"ingress": False, "egress": False}
    await asyncio.sleep(0)


def test_related_icmp_errors_and_resets(topo, datapath, abc):
    """A denies all ingress; errors/resets answering A's own flows still arrive."""
    a, b, c = abc
    maps = datapath.maps
    maps.endpoints.upsert(a.endpoint(ingress=True))
    maps.policy.set_endpoint_policy(a.lxc_id, [])
    maps.ct.flush()
    REFUSED = 3
    assert topo.udp(a, b.ipv4, 7777) == REFUSED     # ICMP port unreachable (related)
    assert topo.udp(a, b.ipv6, 7777) == REFUSED     # ICMPv6 port unreachable
    assert topo.tcp(a, b.ipv4, 7777) == REFUSED     # RST (reply)
    assert topo.udp(None, a.ipv4, 7777) == TIMEOUT  # nothing may open a flow to A
    assert not topo.ping(b, a.ipv4)


def test_drop_events(topo, datapath, abc):
    a, b, c = abc
    maps = datapath.maps
    reader = maps.event_reader()
    try:
        maps.endpoints.upsert(b.endpoint(ingress=True))
        maps.policy.set_endpoint_policy(b.lxc_id, [])
        assert not topo.ping(a, b.ipv4)
        evs = [e for e in reader.poll(200) if e.type == NOTIFY_DROP]
        assert evs, "no drop notification"
        e = evs[0]
        assert (e.subtype, e.source, e.src_label, e.dst_label, e.ifindex) == \
            (DROP_L3, b.lxc_id, a.identity, b.identity, a.ifindex)
        assert e.drop_reason == "Policy denied (L3)"
        assert e.len_cap == min(e.len_orig, 128) and len(e.data) == e.len_cap
        assert e.data[12:14] == b"\x08\x00"                 # IPv4 frame
        assert e.data[14 + 12:14 + 16] == bytes(map(int, a.ipv4.split(".")))
        assert e.direction == 1                             # METRIC_INGRESS
    finally:
        reader.close()


def test_incompatible_pinned_map_is_recreated(datapath_object, pin_root):
    os.makedirs(pin_root, exist_ok=True)
    path = os.path.join(pin_root, "cilium_policy")
    res = os.system(f"bpftool map create {path} type hash key 12 value 8 entries 16 "
                    f"name cilium_policy")
    assert res == 0
    dp = Datapath.load(datapath_object, pin_root=pin_root)
    try:
        dp.maps.policy.set_endpoint_policy(1, [PolicyEntry(5, "ingress", 80, "tcp")])
        assert len(dp.maps.policy.dump(1)) == 1
    finally:
        dp.close()


def test_endpoint_delete_and_ct_flush_addresses(topo, datapath, abc):
    a, b, c = abc
    maps = datapath.maps
    assert topo.ping(a, b.ipv4) and topo.ping(c, b.ipv6)
    assert maps.ct.flush_addresses(a.ipv4, a.ipv6) >= 1
    assert all(a.ipv4 not in (e.saddr, e.daddr) for e in maps.ct.dump())
    assert any(e.daddr == b.ipv6 for e in maps.ct.dump())
    maps.endpoints.delete(b.ifindex, b.ipv4, b.ipv6)
    assert maps.endpoints.get(b.ifindex) is None and maps.endpoints.lookup_ip(b.ipv4) is None
    # B is no longer a local endpoint: traffic to it is routed by the stack
    # (to-container lets it through as B's program finds no endpoint)
    assert topo.ping(a, b.ipv4)


def test_bulk_transfer_under_policy(topo, datapath, abc):
    """Large (GSO) packets survive the MAC/TTL rewrite and redirect_peer."""
    a, b, c = abc
    maps = datapath.maps
    topo.serve(b, 5001, mode="sink")
    maps.endpoints.upsert(b.endpoint(ingress=True))
    maps.policy.set_endpoint_policy(b.lxc_id, [PolicyEntry(a.identity, "ingress", 5001, "tcp")])
    rc4, gbps4 = topo.bulk(a, b.ipv4, 5001, 512)
    rc6, gbps6 = topo.bulk(a, b.ipv6, 5001, 512)
    print(f"\n[throughput] python TCP A->B under policy: v4 {gbps4} Gbit/s, v6 {gbps6} Gbit/s")
    assert (rc4, rc6) == (0, 0)
    st = maps.policy.get(b.lxc_id, PolicyEntry(a.identity, "ingress", 5001, "tcp"))
    assert st.bytes >= 2 * 512 << 20


def test_compile_once_per_configuration(datapath_object, tmp_path):
    from docker_cilium.datapath.loader import compile_datapath

    out = datapath_object.parent
    assert compile_datapath(out_dir=out) == datapath_object          # cached
    other = compile_datapath(out_dir=out, defines={"CT_MAP_SIZE": 4096})
    assert other != datapath_object and other.exists()
    built = other.stat()
    assert compile_datapath(out_dir=out, defines={"CT_MAP_SIZE": 4096}) == other
    after = other.stat()
    # not rebuilt: a build replaces the file (new inode); timing is in bench.datapath_compile
    assert (after.st_ino, after.st_mtime_ns) == (built.st_ino, built.st_mtime_ns)


def test_ipv6_link_local_faces_policy(topo, datapath, abc):
    """Link-local is not a side door: only ND/MLD bypass policy, and only as such."""
    from pyroute2 import IPRoute

    a, b, c = abc
    maps = datapath.maps
    with IPRoute() as ip:
        lls = [x.get("address") for x in ip.get_addr(index=a.ifindex, family=10) if x["scope"] == 253]
    assert lls, f"{a.host_if} has no link-local address"
    host_ll = lls[0]

    def ll_ping() -> bool:
        return subprocess.run(["ip", "netns", "exec", a.netns, "/bin/busybox", "ping6", "-c", "1", "-W", "1",
                               "-I", "eth0", host_ll], capture_output=True, timeout=10).returncode == 0

    maps.endpoints.upsert(a.endpoint())
    maps.ct.flush()
    assert wait_for(ll_ping), "link-local to the host must work without enforcement"
    maps.endpoints.upsert(a.endpoint(egress=True))
    maps.policy.set_endpoint_policy(a.lxc_id, [PolicyEntry(b.identity, "egress")])
    maps.ct.flush()
    assert not ll_ping()              # egress policy covers link-local destinations
    assert topo.ping(a, b.ipv6)       # while neighbour discovery keeps working


def wait_for(fn, tries: int = 5) -> bool:
    for _ in range(tries):
        if fn():
            return True
        time.sleep(0.5)
    return False
