"""`cilium cleanup` takes only what is ours: on a host with a second datapath
(another bpf root, as the privileged tests and a second agent have), its tc
filters are left alone, however alike their names.

Only the filters of this test's own links are ever removed here: other
suites may run beside this one, and their links must not be touched.
"""

from __future__ import annotations

import os
import random

from pyroute2 import IPRoute

from docker_cilium import defaults
from docker_cilium.datapath import cleanup as host
from docker_cilium.datapath.loader import Datapath, unpin_all


def _veth(ip: IPRoute, name: str, peer: str | None = None) -> int:
    ip.link("add", ifname=name, kind="veth", peer={"ifname": peer or name + "p"})
    return ip.link_lookup(ifname=name)[0]


def test_find_and_remove_only_our_datapaths_filters(datapath_object, datapath, pin_root):
    """``datapath`` (fixture) is someone else's; ``ours`` is loaded under another root."""
    tag = f"{os.getpid() % 1000:03d}{random.randrange(1000):03d}"
    foreign_if, our_if = f"dcf{tag}", f"dco{tag}"
    our_base = os.path.join(defaults.BPFFS_ROOT, f"dctest-{os.getpid()}-{random.randrange(1 << 30):x}")
    ours = Datapath.load(datapath_object, pin_root=defaults.bpf_pin_root(our_base))
    with IPRoute() as ip:
        try:
            datapath.attach(_veth(ip, foreign_if))
            ours.attach(_veth(ip, our_if))
            traces = host.find(our_base)
            mine = [f for f in traces.tc_filters if f.ifname in (foreign_if, our_if)]
            assert sorted((f.ifname, f.name) for f in mine) == [
                (our_if, "bpf_lxc.o:[from_container]"), (our_if, "bpf_lxc.o:[to_container]")]
            assert foreign_if not in traces.links.values() and our_if not in traces.links.values()
            assert sorted(os.path.basename(p) for p in traces.pins if p.startswith(our_base)) == sorted(
                host.OUR_MAPS | {"from_container", "to_container", "from_host", "to_overlay", "from_overlay"})

            done, errors = host.remove(host.HostTraces(tc_filters=mine))
            assert errors == [] and len(done) == 2
            assert ours.attached(ip.link_lookup(ifname=our_if)[0]) == {"ingress": False, "egress": False}
            assert datapath.attached(ip.link_lookup(ifname=foreign_if)[0]) == {"ingress": True, "egress": True}
        finally:
            for name in (foreign_if, our_if):
                if ip.link_lookup(ifname=name):
                    ip.link("del", ifname=name)
            ours.close()
            unpin_all(defaults.bpf_pin_root(our_base))
            for dirpath, _dirs, files in os.walk(our_base, topdown=False):
                for f in files:
                    os.unlink(os.path.join(dirpath, f))
                os.rmdir(dirpath)


def test_routes_by_our_links_in_every_table():
    """Routes leaving by an endpoint link are listed (main and other tables, both
    families) and removed with it; a route by a link not named as ours is not."""
    ours_name = "lxc" + f"{random.randrange(1 << 48):012x}"
    other_name = f"dcr{os.getpid() % 1000:03d}{random.randrange(1000):03d}"
    with IPRoute() as ip:
        try:
            ours, other = _veth(ip, ours_name, other_name + "q"), _veth(ip, other_name)
            for idx in (ours, other):
                ip.link("set", index=idx, state="up")
            ip.route("add", dst="198.18.77.1/32", oif=ours)
            ip.route("add", dst="198.18.78.0/24", oif=ours, table=77)
            ip.route("add", dst="fd00:77::1/128", oif=ours)
            ip.route("add", dst="198.18.79.1/32", oif=other)
            traces = host.find("/nonexistent-bpf-root")
            assert traces.links.get(ours) == ours_name and other not in traces.links
            routes = [r for r in traces.routes if r.oif in (ours, other)]
            assert sorted(str(r) for r in routes if not r.dst.startswith("fe80:")) == [
                f"198.18.77.1/32 dev {ours_name}", f"198.18.78.0/24 dev {ours_name} table 77",
                f"fd00:77::1/128 dev {ours_name}"]

            done, errors = host.remove(host.HostTraces(routes=routes, links={ours: ours_name}))
            assert errors == [] and f"removed link {ours_name}" in done
            assert ip.link_lookup(ifname=ours_name) == []
            assert [r.get_attr("RTA_DST") for r in ip.get_routes(family=2, oif=other)] == ["198.18.79.1"]
        finally:
            for name in (ours_name, other_name):
                if ip.link_lookup(ifname=name):
                    ip.link("del", ifname=name)
