"""Cilium's documented Docker flow against a real dockerd and a real agent."""

from __future__ import annotations

import ipaddress
import json

from tests.e2e.conftest import create_network, exec_, host_leaks, net_settings, run_container
from tests.helpers import docker, wait_until

HTTPD = ("httpd", "-f", "-p", "80", "-h", "/var/www")


def node_ranges(agent) -> tuple[ipaddress.IPv4Network, ipaddress.IPv6Network]:
    cfg = agent.cli_json("config")
    return (ipaddress.ip_network(cfg["addressing"]["ipv4"]["alloc-range"]),
            ipaddress.ip_network(cfg["addressing"]["ipv6"]["alloc-range"]))


def ping(container: str, ip: str, check: bool = True):
    cmd = "ping6" if ":" in ip else "ping"
    return exec_(container, cmd, "-c", "2", "-W", "2", ip, check=check)


def http_get(container: str, ip: str, port: int = 80, check: bool = True):
    host = f"[{ip}]" if ":" in ip else ip
    return exec_(container, "timeout", "5", "wget", "-q", "-O", "-", f"http://{host}:{port}/", check=check)


def test_documented_flow_ipv4_ipv6(agent, names):
    v4range, v6range = node_ranges(agent)
    net = names("cilium-net")
    create_network(net, "--ipv6", "--subnet", "::1/112", "--driver", "cilium", "--ipam-driver", "cilium")
    app1 = run_container(names("app1"), net, "-l", "id=app1", cmd=HTTPD)
    app2 = run_container(names("app2"), net, "-l", "id=app2")
    nolabels = run_container(names("plain"), net)  # containers without labels work (cilium#4213)

    s1, s2 = net_settings(app1, net), net_settings(app2, net)
    for s in (s1, s2):
        assert s["IPPrefixLen"] == 32 and s["GlobalIPv6PrefixLen"] == 128
        assert ipaddress.ip_address(s["IPAddress"]) in v4range
        assert ipaddress.ip_address(s["GlobalIPv6Address"]) in v6range
        assert s["GlobalIPv6Address"].startswith("f00d:")
        assert s["Gateway"] == str(v4range.network_address + 1)
        assert s["EndpointID"]
    assert s1["IPAddress"] != s2["IPAddress"]

    # docker inspect's EndpointID is the agent's docker-endpoint reference.
    ep = agent.cli_json("endpoint", "get", "docker-endpoint:" + s1["EndpointID"])
    assert ep["addressing"]["ipv4"] == s1["IPAddress"]
    assert ep["addressing"]["ipv6"] == s1["GlobalIPv6Address"]
    assert ep["mac"] == s1["MacAddress"]

    ping(app2, s1["IPAddress"])
    ping(app2, s1["GlobalIPv6Address"])
    assert "docker-cilium" in http_get(app2, s1["IPAddress"]).stdout
    assert "docker-cilium" in http_get(app2, s1["GlobalIPv6Address"]).stdout
    ping(nolabels, s1["IPAddress"])
    # The host reaches containers and containers reach the host.
    router = str(v4range.network_address + 1)
    ping(app2, router)

    # Labels arrive asynchronously from Docker's event stream.
    def labelled():
        eps = {e["container-name"]: e for e in agent.cli_json("endpoint", "list")}
        return eps.get(names("app1"), {}).get("labels", {}).get("orchestration-identity", []).count("container:id=app1") == 1
    wait_until(labelled, what="app1's labels on its endpoint")
    listing = agent.cli("endpoint", "list").stdout
    assert "ENDPOINT" in listing and "container:id=app2" in listing and s2["IPAddress"] in listing

    for c in (app1, app2, nolabels):
        docker("rm", "-f", c)
    docker("network", "rm", net)
    assert agent.cli_json("endpoint", "list") == []
    assert host_leaks() == []
    status = agent.cli_json("status")
    assert status["ipam"]["ipv4"].startswith("0/")


def test_ipv4_only_network_and_mtu(agent, names):
    net = names("v4only")
    create_network(net, "--driver", "cilium", "--ipam-driver", "cilium")
    a = run_container(names("a"), net)
    b = run_container(names("b"), net)
    sb = net_settings(b, net)
    assert sb["GlobalIPv6Address"] == ""
    ping(a, sb["IPAddress"])
    # MTU follows the uplink by default ...
    cfg = agent.cli_json("config")
    assert exec_(a, "cat", "/sys/class/net/cilium0/mtu").stdout.strip() == str(cfg["mtu"])
    # ... and the driver option overrides it.
    net2 = names("mtu")
    create_network(net2, "--driver", "cilium", "--ipam-driver", "cilium", "-o", "com.docker.network.driver.mtu=1280")
    c = run_container(names("c"), net2)
    assert exec_(c, "cat", "/sys/class/net/cilium0/mtu").stdout.strip() == "1280"


def test_docker_default_ipam(agent, names):
    """`docker network create -d cilium` as users type it: Docker picks the subnet."""
    net = names("dflt")
    create_network(net, "-d", "cilium")
    a = run_container(names("a"), net)
    b = run_container(names("b"), net, cmd=HTTPD)
    sa, sb = net_settings(a, net), net_settings(b, net)
    pool = json.loads(docker("network", "inspect", net).stdout)[0]["IPAM"]["Config"][0]
    assert ipaddress.ip_address(sb["IPAddress"]) in ipaddress.ip_network(pool["Subnet"])
    ping(a, sb["IPAddress"])
    assert "docker-cilium" in http_get(a, sb["IPAddress"]).stdout
    ping(a, sa["Gateway"])  # the pool gateway lives on cilium_host


def test_requested_ip_and_subnet_inside_node_range(agent, names):
    v4range, _ = node_ranges(agent)
    subnet = ipaddress.ip_network(f"{v4range.network_address + 5 * 256}/24")
    wanted = str(subnet.network_address + 9)
    net = names("fixed")
    create_network(net, "--driver", "cilium", "--ipam-driver", "cilium", "--subnet", str(subnet))
    c = run_container(names("fixed"), net, "--ip", wanted)
    assert net_settings(c, net)["IPAddress"] == wanted
    taken = docker("run", "-d", "--name", names("dup"), "--label", "docker-cilium-test=1", "--net", net,
                   "--ip", wanted, "busybox", "sleep", "60", check=False)
    assert taken.returncode != 0 and "already allocated" in taken.stderr
    outside = str(v4range.network_address + 7 * 256 + 9)
    bad = docker("run", "-d", "--name", names("out"), "--label", "docker-cilium-test=1", "--net", net,
                 "--ip", outside, "busybox", "sleep", "60", check=False)
    assert bad.returncode != 0 and outside in bad.stderr, bad.stderr
    # A second network shares the node pool: the same address cannot be had twice.
    net2 = names("fixed2")
    create_network(net2, "--driver", "cilium", "--ipam-driver", "cilium", "--subnet", str(subnet))
    again = docker("run", "-d", "--name", names("dup2"), "--label", "docker-cilium-test=1", "--net", net2,
                   "--ip", wanted, "busybox", "sleep", "60", check=False)
    assert again.returncode != 0 and "already allocated" in again.stderr
    outside_range = docker("network", "create", "--label", "docker-cilium-test=1", "--driver", "cilium",
                           "--ipam-driver", "cilium", "--subnet", "192.168.250.0/24", names("bad"), check=False)
    assert outside_range.returncode != 0 and "outside this node's IPv4 range" in outside_range.stderr


def test_container_on_cilium_and_bridge(agent, names):
    """cilium#26190: a container on cilium-net AND Docker's bridge works both ways round."""
    net = names("dual")
    create_network(net, "--ipv6", "--subnet", "::1/112", "--driver", "cilium", "--ipam-driver", "cilium")
    server = run_container(names("srv"), net, cmd=HTTPD)
    ip = net_settings(server, net)["IPAddress"]
    # cilium first, then bridge
    a = run_container(names("a"), net)
    docker("network", "connect", "bridge", a)
    ping(a, ip)
    # bridge first (the default gateway stays Docker's), then cilium
    b = docker("run", "-d", "--name", names("b"), "--label", "docker-cilium-test=1", "busybox",
               "sleep", "3600").stdout.strip()
    docker("network", "connect", net, b)
    ping(b, ip)
    assert "docker-cilium" in http_get(b, ip).stdout
    docker("network", "disconnect", net, b)
    docker("network", "disconnect", "bridge", a)
    ping(a, ip)


def test_agent_api_ipam_and_errors(agent):
    """POST/DELETE /v1/ipam on the real agent, and bad input answered precisely."""
    import pytest

    from docker_cilium.cli.client import APIError, Client

    v4range, v6range = node_ranges(agent)
    api = Client(agent.api_socket)
    got = api.request("POST", "/ipam", query={"owner": "e2e"})
    v4, v6 = got["address"]["ipv4"], got["address"]["ipv6"]
    assert ipaddress.ip_address(v4) in v4range and ipaddress.ip_address(v6) in v6range
    assert got["host-addressing"]["ipv4"]["ip"] == str(v4range.network_address + 1)
    with pytest.raises(APIError) as err:
        api.request("POST", f"/ipam/{v4}")
    assert err.value.status == 409 and "already allocated" in str(err.value)
    api.request("DELETE", f"/ipam/{v4}")
    api.request("DELETE", f"/ipam/{v6}")
    for method, path, kw, status, needle in [
        ("DELETE", f"/ipam/{v4}", {}, 404, "not allocated"),
        ("DELETE", "/ipam/not-an-ip", {}, 400, "invalid IP address"),
        ("POST", "/ipam", {"query": {"family": "ipx"}}, 400, "family must be"),
        ("PUT", "/policy", {"raw": b"[{oops"}, 400, "invalid JSON at line 1 column 3"),
        ("PUT", "/policy", {"raw": b'[{"endpointSelector": {}, "ingres": []}]'}, 400, "ingres"),
        ("GET", "/endpoint/424242", {}, 400, "invalid endpoint ID"),  # Cilium's IDs are uint16
        ("GET", "/endpoint/container-name:no-such-container", {}, 404, "not found"),
        ("GET", "/endpoint/bogus:1", {}, 400, "unknown prefix"),
        ("GET", "/no/such/path", {}, 404, "no such API path"),
    ]:
        with pytest.raises(APIError) as err:
            api.request(method, path, **kw)
        assert err.value.status == status and needle in str(err.value), (path, str(err.value))
    assert api.get("/healthz")["cilium"]["state"] == "Ok"  # still serving
    assert api.get("/policy")["revision"] == 0  # nothing was imported
