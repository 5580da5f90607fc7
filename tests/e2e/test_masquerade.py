"""Traffic leaving the node range is masqueraded: an outside host with no route
back to the container range still answers."""

from __future__ import annotations

import pytest
from pyroute2 import IPRoute, NetNS, netns

from tests.e2e.conftest import create_network, exec_, run_container

OUTSIDE_NS = "dct-outside"
HOST_IF, NS_IF = "dctout0", "dctout1"
HOST_IP, NS_IP = "198.18.99.1", "198.18.99.2"


@pytest.fixture
def outside_host():
    """A network namespace on a /30 beside the host, with no route to 10.X/16."""
    if OUTSIDE_NS in netns.listnetns():
        netns.remove(OUTSIDE_NS)
    netns.create(OUTSIDE_NS)
    try:
        with IPRoute() as ip:
            ip.link("add", ifname=HOST_IF, kind="veth", peer={"ifname": NS_IF, "net_ns_fd": OUTSIDE_NS})
            idx = ip.link_lookup(ifname=HOST_IF)[0]
            ip.addr("add", index=idx, address=HOST_IP, prefixlen=30)
            ip.link("set", index=idx, state="up")
        with NetNS(OUTSIDE_NS) as ns:
            idx = ns.link_lookup(ifname=NS_IF)[0]
            ns.addr("add", index=idx, address=NS_IP, prefixlen=30)
            ns.link("set", index=idx, state="up")
            ns.link("set", index=ns.link_lookup(ifname="lo")[0], state="up")
        yield NS_IP
    finally:
        with IPRoute() as ip:
            found = ip.link_lookup(ifname=HOST_IF)
            if found:
                ip.link("del", index=found[0])
        netns.remove(OUTSIDE_NS)


def test_masquerade_to_outside(agent, names, outside_host):
    net = names("masq")
    create_network(net, "--driver", "cilium", "--ipam-driver", "cilium")
    c = run_container(names("c"), net)
    exec_(c, "ping", "-c", "2", "-W", "2", outside_host)


def test_no_masquerade_flag(agent, names, outside_host):
    """With --no-masquerade the outside host cannot answer: the check above is real."""
    net = names("nomasq")
    create_network(net, "--driver", "cilium", "--ipam-driver", "cilium")
    c = run_container(names("c"), net)
    agent.stop()
    agent.extra = ["--no-masquerade"]
    try:
        agent.start()
        assert exec_(c, "ping", "-c", "2", "-W", "1", outside_host, check=False).returncode != 0
    finally:
        agent.stop()
        agent.extra = []
        agent.start()
    exec_(c, "ping", "-c", "2", "-W", "2", outside_host)
