"""Drop and forward metrics from the real per-CPU ``cilium_metrics`` map, scraped
over HTTP from the agent's metrics server while real packets are dropped by
policy in both directions (see conftest.py for the topology)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import threading
import urllib.request

import pytest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from docker_cilium.cli.main import cli
from docker_cilium.datapath.maps.policymap import PolicyEntry
from docker_cilium.metrics import AgentMetrics
from docker_cilium.metrics.server import MetricsServer

pytestmark = pytest.mark.privileged

OK, TIMEOUT = 0, 2
L3 = "Policy denied (L3)"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def served(datapath):
    """(url, metrics): the metrics server on its own loop thread, reading the real map."""
    metrics = AgentMetrics()
    metrics.set_datapath_reader(datapath.maps.metrics.dump)
    port = _free_port()
    server = MetricsServer(metrics, f"127.0.0.1:{port}")
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(server.start(), loop).result(10)
    try:
        yield f"http://127.0.0.1:{port}/metrics", metrics
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def scrape(url: str) -> dict[tuple[str, frozenset], float]:
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.status == 200
        text = resp.read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def drop(m: dict, reason: str, direction: str, what: str = "count") -> float:
    return m.get((f"cilium_drop_{what}_total", frozenset({("reason", reason), ("direction", direction)})), 0.0)


def forward(m: dict, direction: str) -> float:
    return m.get(("cilium_forward_count_total", frozenset({("direction", direction)})), 0.0)


def test_scrape_counts_real_drops_by_reason_and_direction(topo, datapath, abc, served, pin_root):
    a, b, c = abc
    url, _ = served
    maps = datapath.maps
    topo.serve(b, 8080)
    before = scrape(url)
    assert topo.tcp(a, b.ipv4, 8080) == OK     # leaves A: counted at A's egress
    after_ok = scrape(url)
    assert forward(after_ok, "EGRESS") > forward(before, "EGRESS")
    assert topo.tcp(None, b.ipv4, 8080) == OK  # from the host: counted at B's ingress
    after_ok = scrape(url)
    assert forward(after_ok, "INGRESS") > forward(before, "INGRESS")
    assert drop(after_ok, L3, "INGRESS") == drop(before, L3, "INGRESS")

    # Ingress: B admits only A on 8080; C is dropped at B's ingress.
    maps.endpoints.upsert(b.endpoint(ingress=True))
    maps.policy.set_endpoint_policy(b.lxc_id, [PolicyEntry(identity=a.identity, direction="ingress",
                                                           dport=8080, proto="tcp")])
    maps.ct.flush()
    assert topo.tcp(c, b.ipv4, 8080) == TIMEOUT
    m1 = scrape(url)
    assert drop(m1, L3, "INGRESS") > drop(before, L3, "INGRESS")
    assert drop(m1, L3, "INGRESS", "bytes") >= 40 * drop(m1, L3, "INGRESS")  # at least an IPv4+TCP header each
    assert drop(m1, L3, "EGRESS") == drop(before, L3, "EGRESS")

    # Egress: C may send nothing; its ping is dropped leaving C.
    maps.endpoints.upsert(c.endpoint(egress=True))
    assert not topo.ping(c, a.ipv4)
    m2 = scrape(url)
    assert drop(m2, L3, "EGRESS") > drop(m1, L3, "EGRESS")

    # `cilium bpf metrics list` reads the same map and agrees with the scrape.
    base = os.path.dirname(os.path.dirname(pin_root))
    res = CliRunner().invoke(cli, ["bpf", "metrics", "list", "--bpf-root", base, "-o", "json"])
    assert res.exit_code == 0, res.output
    rows = {(r["reason"], r["direction"]): r["packets"] for r in json.loads(res.output)}
    assert rows[(L3, "EGRESS")] == drop(m2, L3, "EGRESS")
    assert rows[(L3, "INGRESS")] == drop(m2, L3, "INGRESS")
