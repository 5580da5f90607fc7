"""The agent's socket LB with a real agent, real containers and a real host
process (this test itself): the agent mounts cgroup v2 and attaches the hooks
through pinned links; a service written into the agent's pinned LB maps (as
its service manager does) is reached by host sockets at its VIP; the links
outlive the agent, a restart swaps programs in place, and
``--bpf-lb-sock=false`` detaches them.

The VIPs are blackholed on the host for the test (tests/e2e/vips.py).
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager

import pytest

from docker_cilium import defaults
from docker_cilium.datapath.bpf import check, libbpf
from docker_cilium.datapath.maps.lbmap import L4Addr
from docker_cilium.datapath.maps.registry import DatapathMaps
from docker_cilium.datapath.socketlb import PROGRAMS, is_cgroup2, link_info
from tests.e2e.conftest import create_network, net_settings, running_agent, run_container
from tests.e2e.vips import VIP4, VIP6, blackholed_vips, http_get, server_cmd
from tests.helpers import run


@pytest.fixture
def sock_agent(dockerd, tmp_path_factory):
    yield from running_agent(tmp_path_factory.mktemp("sockagent"))


@contextmanager
def lb_maps(agent):
    maps = DatapathMaps.open(defaults.bpf_pin_root(agent.bpf_root))
    try:
        yield maps.lb
    finally:
        maps.close()


def links(agent) -> dict:
    d = defaults.socketlb_links_dir(agent.bpf_root)
    out = {}
    for name in sorted(os.listdir(d)) if os.path.isdir(d) else []:
        fd = check(libbpf().bpf_obj_get(os.path.join(d, name).encode()), name)
        try:
            out[name] = link_info(fd)
        finally:
            os.close(fd)
    return out


@pytest.fixture
def vips():
    with blackholed_vips():
        yield


def test_host_process_reaches_vip_through_the_agents_hooks(sock_agent, vips, names):
    net = names("socklb")
    create_network(net, "--ipv6", "--subnet", "::1/112", "--driver", "cilium", "--ipam-driver", "cilium")
    a = run_container(names("a"), net, cmd=server_cmd("a"))
    b = run_container(names("b"), net, cmd=server_cmd("b"))
    sa, sb = net_settings(a, net), net_settings(b, net)

    assert is_cgroup2(defaults.CGROUP_ROOT)
    before = links(sock_agent)
    assert sorted(before) == sorted(PROGRAMS)
    assert {i.cgroup_id for i in before.values()} == {os.stat(defaults.CGROUP_ROOT).st_ino}

    def install() -> None:
        with lb_maps(sock_agent) as lb:
            lb.upsert_service(901, L4Addr(VIP4, 80), [(901, L4Addr(sa["IPAddress"], 80)),
                                                      (902, L4Addr(sb["IPAddress"], 80))])
            lb.upsert_service(902, L4Addr(VIP6, 80), [(903, L4Addr(sa["GlobalIPv6Address"], 80)),
                                                      (904, L4Addr(sb["GlobalIPv6Address"], 80))])

    install()
    for vip in (VIP4, VIP6):
        got = [http_get(vip) for _ in range(16)]
        assert {body for body, _ in got} == {"backend-a", "backend-b"}, got
        assert {peer for _, peer in got} == {(vip, 80)}

    sock_agent.stop()  # the pinned links keep the hooks while the agent is down
    assert http_get(VIP4)[0] in ("backend-a", "backend-b")
    sock_agent.start()
    after = links(sock_agent)
    assert {n: i.id for n, i in after.items()} == {n: i.id for n, i in before.items()}
    assert all(after[n].prog_id != before[n].prog_id for n in PROGRAMS)
    install()  # whatever the service manager restored, this test's service is there
    assert http_get(VIP6)[0] in ("backend-a", "backend-b")

    sock_agent.stop()
    sock_agent.extra = ["--bpf-lb-sock=false"]
    sock_agent.start()
    assert links(sock_agent) == {}
    kernel_links = {link["id"] for link in json.loads(run("bpftool", "-j", "link", "show").stdout)}
    assert not kernel_links & {i.id for i in after.values()}  # detached, not just unpinned
    install()
    assert http_get(VIP4)[0].startswith("error:")
    assert http_get(VIP6)[0].startswith("error:")
