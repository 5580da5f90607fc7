"""Docker-IPAM networks that collide with the node's range are refused, and the
router address on cilium_host survives whatever dockerd asks for."""

from __future__ import annotations

import ipaddress

from pyroute2 import IPRoute

from tests.e2e.conftest import TEST_LABEL, create_network, exec_, net_settings, run_container
from tests.e2e.test_docker_flow import HTTPD, http_get, node_ranges
from tests.helpers import docker


def cilium_host_addresses() -> set[str]:
    with IPRoute() as ip:
        idx = ip.link_lookup(ifname="cilium_host")
        return {a.get("address") for a in ip.get_addr(index=idx[0])} if idx else set()


def routes_via_router(router: str) -> dict[str, str]:
    """Host routes to endpoints (/32) and the device they use, for those with the router as source."""
    with IPRoute() as ip:
        names = {l["index"]: l.get("ifname") for l in ip.get_links()}
        return {r.get("dst"): names.get(r.get("oif"), "") for r in ip.get_routes(family=2)
                if r.get("prefsrc") == router and r["dst_len"] == 32}


def test_network_rm_keeps_router_address_and_routes(agent, names):
    """`docker network create -d cilium --subnet 10.X.0.0/24` (Docker's IPAM: gateway 10.X.0.1, the
    router). Whatever dockerd made of it, after `docker network rm` the router is still on
    cilium_host, every endpoint route still uses it and the containers still reach each other."""
    v4range, _ = node_ranges(agent)
    router = str(v4range.network_address + 1)
    net = names("ok")
    create_network(net, "--driver", "cilium", "--ipam-driver", "cilium")
    a = run_container(names("a"), net)
    b = run_container(names("b"), net, cmd=HTTPD)
    ip_a, ip_b = net_settings(a, net)["IPAddress"], net_settings(b, net)["IPAddress"]
    routes = routes_via_router(router)
    assert {ip_a, ip_b} <= set(routes), routes

    bad = names("bad")
    subnet = f"{v4range.network_address}/24"
    created = docker("network", "create", "--label", TEST_LABEL, "-d", "cilium", "--subnet", subnet, bad,
                     check=False)
    if created.returncode == 0:
        docker("network", "rm", bad)
    assert router in cilium_host_addresses()
    assert routes_via_router(router) == routes
    exec_(a, "ping", "-c", "2", "-W", "2", ip_b)
    assert "docker-cilium" in http_get(a, ip_b).stdout
    exec_(a, "ping", "-c", "1", "-W", "2", router)
    assert created.returncode != 0, "a Docker-IPAM subnet whose gateway is the router was accepted"
    assert f"gateway {router} is this node's router address" in created.stderr, created.stderr


def test_docker_ipam_subnet_overlapping_node_range_refused(agent, names):
    """Docker's IPAM would hand out addresses the cilium IPAM already gave to endpoints."""
    v4range, _ = node_ranges(agent)
    net = names("ok")
    create_network(net, "--driver", "cilium", "--ipam-driver", "cilium")
    a = run_container(names("a"), net)
    held = ipaddress.ip_address(net_settings(a, net)["IPAddress"])
    subnet = ipaddress.ip_network(f"{held}/24", strict=False)
    bad = names("overlap")
    gateway = str(subnet.network_address + 254)  # not the router: the overlap alone is refused
    created = docker("network", "create", "--label", TEST_LABEL, "-d", "cilium", "--subnet", str(subnet),
                     "--gateway", gateway, bad, check=False)
    assert created.returncode != 0, "a Docker-IPAM subnet inside the node range was accepted"
    assert f"subnet {subnet} overlaps this node's IPv4 range {v4range}" in created.stderr, created.stderr
    assert gateway not in cilium_host_addresses()
    # A subnet outside the node range is still served.
    fine = names("fine")
    create_network(fine, "-d", "cilium", "--subnet", "172.29.77.0/24")
    c = run_container(names("c"), fine)
    assert ipaddress.ip_address(net_settings(c, fine)["IPAddress"]) in ipaddress.ip_network("172.29.77.0/24")
