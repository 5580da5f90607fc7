"""`cilium service` with real containers, dockerd and the BPF load balancer.

Backends serve their own name over HTTP, so each answer says which backend
the client container reached through the VIP. The VIPs get blackhole routes
for the test: without the service the host drops what a client sends there
(nothing leaves the machine), and the datapath translates before routing.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest

from docker_cilium import defaults
from docker_cilium.datapath.maps.registry import DatapathMaps
from tests.e2e.conftest import create_network, exec_, net_settings, run_container
from tests.helpers import LineProcess, docker, run, wait_until

NETTOOL = Path(__file__).parent.parent / "privileged" / "nettool.py"


def serve_name(name: str) -> tuple[str, ...]:
    return ("sh", "-c", f"mkdir -p /tmp/www && echo {name} > /tmp/www/index.html && exec httpd -f -p 80 -h /tmp/www")


def fetch(container: str, host: str, port: int = 80) -> str:
    """The name the backend behind host:port answered with, '-' for no answer."""
    host = f"[{host}]" if ":" in host else host
    res = exec_(container, "timeout", "2", "wget", "-q", "-O", "-", f"http://{host}:{port}/", check=False)
    return res.stdout.strip() if res.returncode == 0 else "-"


def pid(container: str) -> str:
    return docker("inspect", "-f", "{{.State.Pid}}", container).stdout.strip()


@pytest.fixture
def vips():
    """(IPv4 VIP, IPv6 VIP), blackholed on the host for the test's length."""
    octet = random.randrange(1, 250)
    v4, v6 = f"10.97.{octet}.10", f"fd97::{octet:x}:10"
    routes = [("-4", f"{v4}/32"), ("-6", f"{v6}/128")]
    for fam, dst in routes:
        run("ip", fam, "route", "add", "blackhole", dst)
    try:
        yield v4, v6
    finally:
        for fam, dst in routes:
            run("ip", fam, "route", "del", "blackhole", dst, check=False)


@pytest.fixture
def apps(agent, names):
    """cilium-net (IPv4 + IPv6), backends b1 and b2 serving their names, a client."""
    net = names("svc")
    create_network(net, "--ipv6", "--subnet", "::1/112", "--driver", "cilium", "--ipam-driver", "cilium")
    b1 = run_container(names("b1"), net, cmd=serve_name("b1"))
    b2 = run_container(names("b2"), net, cmd=serve_name("b2"))
    client = run_container(names("client"), net)
    s1, s2 = net_settings(b1, net), net_settings(b2, net)
    wait_until(lambda: fetch(client, s1["IPAddress"]) == "b1" and fetch(client, s2["IPAddress"]) == "b2",
               what="backends serving")
    yield {"client": client, "b1": b1, "b2": b2, "s1": s1, "s2": s2}
    docker("rm", "-f", b1, b2, client, check=False)
    docker("network", "rm", net, check=False)


def answers(container: str, vip: str, n: int) -> list[str]:
    return [fetch(container, vip) for _ in range(n)]


def test_vip_balances_moves_new_connections_and_goes_away(agent, apps, vips):
    v4, v6 = vips
    s1, s2, client = apps["s1"], apps["s2"], apps["client"]
    out = agent.cli("service", "update", "--id", "1", "--frontend", f"{v4}:80",
                    "--backends", f"{s1['IPAddress']}:80,{s2['IPAddress']}:80").stdout
    assert out.splitlines() == ["Creating new service with id '1'", "Added service with 2 backends"]
    agent.cli("service", "update", "--id", "2", "--frontend", f"[{v6}]:80",
              "--backends", f"[{s1['GlobalIPv6Address']}]:80", "--backends", f"[{s2['GlobalIPv6Address']}]:80")
    assert set(answers(client, v4, 16)) == {"b1", "b2"}
    assert set(answers(client, v6, 16)) == {"b1", "b2"}

    listed = agent.cli("service", "list").stdout
    assert f"{v4}:80/TCP" in listed and f"[{v6}]:80/TCP" in listed and f"2 => {s2['IPAddress']}:80 (active)" in listed
    lb = agent.cli("bpf", "lb", "list").stdout
    assert f"{v4}:80/TCP" in lb and f"{s1['IPAddress']}:80 (1)" in lb

    # b1 leaves both services: new connections reach only b2
    out = agent.cli("service", "update", "--id", "1", "--frontend", f"{v4}:80",
                    "--backends", f"{s2['IPAddress']}:80").stdout
    assert out.splitlines() == ["Updating existing service with id '1'", "Updated service with 1 backends"]
    agent.cli("service", "update", "--id", "2", "--frontend", f"[{v6}]:80",
              "--backends", f"[{s2['GlobalIPv6Address']}]:80")
    assert answers(client, v4, 8) == ["b2"] * 8
    assert answers(client, v6, 8) == ["b2"] * 8

    assert agent.cli("service", "delete", "1").stdout.strip() == "Service 1 deleted successfully"
    assert fetch(client, v4) == "-"
    assert fetch(client, v6) == "b2"
    agent.cli("service", "delete", "--all")
    assert fetch(client, v6) == "-"
    assert agent.cli_json("service", "list") == []


def test_established_connection_to_removed_backend_ends_cleanly(agent, apps, vips):
    """The connection stays on its backend after the backend leaves the
    service, while new ones go to the other, and closes normally."""
    v4, _ = vips
    s1, s2 = apps["s1"], apps["s2"]
    ns = lambda c: ("nsenter", "-t", pid(c), "-n")  # noqa: E731
    servers: list[LineProcess] = []
    conv = None
    try:
        servers = [LineProcess(*ns(apps[b]), sys.executable, str(NETTOOL), "idserve", b, "9000") for b in ("b1", "b2")]
        agent.cli("service", "update", "--id", "3", "--frontend", f"{v4}:9000",
                  "--backends", f"{s1['IPAddress']}:9000")
        conv = LineProcess(*ns(apps["client"]), sys.executable, str(NETTOOL), "converse", v4, "9000")
        assert conv.say() == "b1"
        agent.cli("service", "update", "--id", "3", "--frontend", f"{v4}:9000",
                  "--backends", f"{s2['IPAddress']}:9000")
        new = run(*ns(apps["client"]), sys.executable, str(NETTOOL), "ask", "tcp", v4, "9000", "6").stdout.split()
        assert new == ["b2"] * 6
        assert [conv.say() for _ in range(3)] == ["b1"] * 3
        assert conv.finish() == 0
    finally:
        for p in [*servers, *([conv] if conv else [])]:
            p.close()
        agent.cli("service", "delete", "--all")


def test_no_backend_drops_158_and_hairpin(agent, apps, vips):
    v4, v6 = vips
    s1, b1 = apps["s1"], apps["b1"]
    agent.cli("service", "update", "--id", "4", "--frontend", f"{v4}:80")
    assert fetch(apps["client"], v4) == "-"
    metrics = agent.cli_json("bpf", "metrics", "list")
    assert any(m["reason-code"] == 158 and m["reason"] == "Service backend not found" and m["packets"] > 0
               for m in metrics), metrics
    # a backend reaching the VIP is balanced to itself
    agent.cli("service", "update", "--id", "4", "--frontend", f"{v4}:80", "--backends", f"{s1['IPAddress']}:80")
    assert answers(b1, v4, 3) == ["b1"] * 3
    agent.cli("service", "update", "--id", "5", "--frontend", f"[{v6}]:80",
              "--backends", f"[{s1['GlobalIPv6Address']}]:80")
    assert answers(b1, v6, 3) == ["b1"] * 3
    agent.cli("service", "delete", "--all")


def test_bad_input_is_named(agent):
    res = agent.cli("service", "update", "--id", "5", "--frontend", "10.97.0.10:80",
                    "--backends", "[fd00::1]:80", check=False)
    assert res.returncode == 1
    assert "backend-addresses[0].ip: fd00::1 is not IPv4 like the frontend 10.97.0.10" in res.stderr
    res = agent.cli("service", "update", "--id", "5", "--frontend", "10.97.0.10", check=False)
    assert res.returncode == 2 and "--frontend: '10.97.0.10' is not IP:PORT" in res.stderr
    res = agent.cli("service", "get", "5", check=False)
    assert res.returncode == 1 and "service 5 not found" in res.stderr
    assert agent.cli_json("service", "list") == []


def test_services_survive_restart_and_are_restored_into_the_maps(agent, apps, vips):
    v4, _ = vips
    s1, s2 = apps["s1"], apps["s2"]
    agent.cli("service", "update", "--id", "6", "--frontend", f"{v4}:80",
              "--backends", f"{s1['IPAddress']}:80,{s2['IPAddress']}:80", "--protocol", "TCP")
    before = agent.cli_json("service", "list")
    agent.stop()
    # while the agent is down the maps lose the service: only the agent's restore brings it back
    maps = DatapathMaps.open(defaults.bpf_pin_root(agent.bpf_root))
    try:
        [svc] = [s for s in maps.lb.dump() if s.id == 6]
        maps.lb.delete_service(6, svc.frontend)
    finally:
        maps.close()
    agent.start()
    assert agent.cli_json("service", "list") == before
    assert set(answers(apps["client"], v4, 12)) == {"b1", "b2"}
    agent.cli("service", "delete", "6")
