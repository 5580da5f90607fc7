"""Traffic leaving the node range is masqueraded: an outside host with no route
back to the container range still answers."""

from __future__ import annotations

from tests.e2e.conftest import create_network, exec_, run_container


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
