"""Cluster health: the /hello responder, the prober's state and `cilium status`'s line.

Real sockets on the loopback: 127.0.0.0/8 all reaches one responder bound to
every address, which stands in for every node that answers; 192.0.2.1
(TEST-NET-1, routed nowhere) is a node that does not.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time

import aiohttp
from aiohttp import web

from docker_cilium.cli.status import cluster_health_line, print_status
from docker_cilium.node.health import HealthProber, HealthResponder
from docker_cilium.node.types import INTERNAL_IP, Node


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node(name: str, ip: str, health_ip: str) -> Node:
    return Node(name=name, addresses=((INTERNAL_IP, ip),), ipv4_alloc_cidr=ipaddress.IPv4Network("10.7.0.0/16"),
                ipv4_health_ip=health_ip)


async def test_responder_answers_hello_on_every_address() -> None:
    port = free_port()
    r = HealthResponder("node1", port)
    await r.start()
    try:
        async with aiohttp.ClientSession() as s:
            for host in ("127.0.0.1", "127.0.0.5", "[::1]"):
                async with s.get(f"http://{host}:{port}/hello") as resp:
                    assert resp.status == 200 and "node1" in await resp.text()
    finally:
        await r.close()


async def test_responder_port_taken_is_reported_not_raised() -> None:
    port = free_port()
    first, second = HealthResponder("a", port), HealthResponder("b", port, host="127.0.0.1")
    await first.start()
    try:
        await second.start()
        assert second.error.startswith(f"health port {port}: ") and "in use" in second.error
    finally:
        await second.close()
        await first.close()


async def test_prober_counts_reachable_nodes_and_names_the_others() -> None:
    port = free_port()
    r = HealthResponder("x", port)
    nodes = [node("node1", "127.0.0.1", "127.0.0.2"), node("node2", "127.0.0.3", "127.0.0.4"),
             node("node3", "127.0.0.5", "192.0.2.1")]  # node3: underlay fine, tunnel down
    prober = HealthProber(lambda: nodes, port=port, timeout_s=0.5)
    await r.start()
    await prober.start()  # its loop probes at once
    try:
        assert prober.status()["msg"] in ("no probe yet", "2/3 reachable, unreachable: node3")
        await prober.probe_once()
        st = prober.status()
        assert (st["state"], st["reachable"], st["total"]) == ("Warning", 2, 3)
        assert st["msg"] == "2/3 reachable, unreachable: node3"
        n3 = st["nodes"][2]
        assert n3["name"] == "node3" and n3["host"]["reachable"] and not n3["tunnel"]["reachable"]
        assert n3["tunnel"]["status"]
        assert st["nodes"][0]["tunnel"]["latency-ms"] > 0

        nodes.pop()  # node3 left: forgotten
        await prober.probe_once()
        assert (prober.status()["state"], prober.status()["msg"]) == ("Ok", "2/2 reachable")

        nodes[1] = node("node2", "192.0.2.1", "127.0.0.4")  # only this node answers now
        await prober.probe_once()
        assert (prober.status()["state"], prober.status()["reachable"]) == ("Failure", 1)
    finally:
        await prober.close()
        await r.close()


async def test_a_round_over_hundreds_of_nodes_keeps_its_sockets_bounded() -> None:
    """300 nodes (600 probes) against a slow responder: at most max_in_flight connections at once,
    every node still reachable, and close() leaves no task behind."""
    in_flight, peak = 0, 0

    async def hello(_: web.Request) -> web.Response:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.05)
        in_flight -= 1
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/hello", hello)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    nodes = [node(f"node{i}", "127.0.0.1", "127.0.0.1") for i in range(300)]
    p = HealthProber(lambda: nodes, port=port, interval_s=60, timeout_s=10, max_in_flight=32)
    before = len(asyncio.all_tasks())
    await p.start()
    try:
        for _ in range(200):
            if p.last_probe:
                break
            await asyncio.sleep(0.05)
        st = p.status()
        assert (st["reachable"], st["total"]) == (300, 300), st["msg"]
        assert 1 <= peak <= 32, peak
    finally:
        await p.close()
        await runner.cleanup()
    assert len(asyncio.all_tasks()) <= before


def test_status_line_as_cilium_prints_it(capsys) -> None:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(time.time() - 4))
    health = {"state": "Warning", "reachable": 2, "total": 3, "last-probe": stamp, "nodes": [
        {"name": "node1", "host": {"reachable": True}, "tunnel": {"reachable": True}},
        {"name": "node3", "host": {"reachable": True}, "tunnel": {"reachable": False}}]}
    line = cluster_health_line(health)
    assert line.startswith("2/3 reachable   (last probe ") and line.endswith("ago)   unreachable: node3")
    print_status({"cluster-health": health}, False, False, False)
    assert "\nCluster health:         2/3 reachable   (last probe " in capsys.readouterr().out
