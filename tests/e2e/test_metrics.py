"""Prometheus metrics of a real agent (--prometheus-serve-addr), scraped over
HTTP while real containers talk: a real policy drop counted by reason and
direction, API calls by path/method/code, endpoints by state, policies and
import errors, KV store operations; the BPF counters outlive an agent restart."""

from __future__ import annotations

import json
import socket
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from docker_cilium.cli.client import Client
from docker_cilium.errors import BadRequest
from tests.e2e.conftest import create_network, exec_, net_settings, run_container, running_agent
from tests.e2e.test_policy_demo import APP1, POLICY, labelled, reaches

L3 = "Policy denied (L3)"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served_agent(dockerd, tmp_path_factory):
    """(agent, /metrics URL): one agent serving metrics on a loopback port."""
    port = _free_port()
    for a in running_agent(tmp_path_factory.mktemp("agent"), ["--prometheus-serve-addr", f"127.0.0.1:{port}"]):
        yield a, f"http://127.0.0.1:{port}/metrics"


def scrape(url: str) -> dict[tuple[str, frozenset], float]:
    t0 = time.perf_counter()
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/plain")
        text = resp.read().decode()
    print(f"[timing] scrape {(time.perf_counter() - t0) * 1000:.1f} ms, {len(text)} bytes")
    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def get(m: dict, name: str, **labels: str) -> float:
    return m.get((name, frozenset(labels.items())), 0.0)


API = "cilium_agent_api_process_time_seconds_count"


def test_real_agent_metrics(served_agent, names):
    agent, url = served_agent
    # API calls, by route template, method and status.
    m0 = scrape(url)
    agent.cli("endpoint", "list")
    assert agent.cli("endpoint", "get", "65000", check=False).returncode != 0
    m1 = scrape(url)
    assert get(m1, API, path="/v1/endpoint", method="GET", return_code="200") == \
        get(m0, API, path="/v1/endpoint", method="GET", return_code="200") + 1
    assert get(m1, API, path="/v1/endpoint/{id}", method="GET", return_code="404") == \
        get(m0, API, path="/v1/endpoint/{id}", method="GET", return_code="404") + 1

    # The handbook's demo: app3 is dropped at app1's ingress once the l3 rule is in.
    net = names("cilium-net")
    create_network(net, "--driver", "cilium", "--ipam-driver", "cilium")
    app1 = run_container(names("app1"), net, "-l", "id=app1", cmd=APP1)
    app2 = run_container(names("app2"), net, "-l", "id=app2")
    app3 = run_container(names("app3"), net, "-l", "id=app3")
    for name, label in (("app1", "id=app1"), ("app2", "id=app2"), ("app3", "id=app3")):
        labelled(agent, names(name), f"container:{label}")
    ip1 = net_settings(app1, net)["IPAddress"]

    # An import the agent refuses (the CLI validates first, so straight to the API).
    bad = json.dumps([{"endpointSelector": {"matchLabels": {"id": "app1"}}, "ingress": "nope"}]).encode()
    with pytest.raises(BadRequest):
        Client(agent.api_socket).request("PUT", "/policy", raw=bad)
    out = agent.cli("policy", "import", str(POLICY)).stdout
    rev = int(out.split()[-1])
    before = scrape(url)
    assert reaches(app2, ip1)
    assert not reaches(app3, ip1)
    assert exec_(app3, "ping", "-c", "2", "-W", "1", ip1, check=False).returncode != 0
    m = scrape(url)

    assert get(m, "cilium_drop_count_total", reason=L3, direction="INGRESS") >= \
        get(before, "cilium_drop_count_total", reason=L3, direction="INGRESS") + 2  # wget SYN + pings
    assert get(m, "cilium_drop_bytes_total", reason=L3, direction="INGRESS") > \
        get(before, "cilium_drop_bytes_total", reason=L3, direction="INGRESS")
    assert get(m, "cilium_forward_count_total", direction="EGRESS") > \
        get(before, "cilium_forward_count_total", direction="EGRESS")

    # Endpoints by state, as `cilium endpoint list` shows them.
    eps = agent.cli_json("endpoint", "list")
    assert get(m, "cilium_endpoint") == len(eps) >= 3
    for state in {e["state"] for e in eps}:
        assert get(m, "cilium_endpoint_state", endpoint_state=state) == sum(e["state"] == state for e in eps)
    # Policy, revision, the failed import; identities; regenerations; the KV store.
    assert get(m, "cilium_policy") == 1
    assert get(m, "cilium_policy_max_revision") == rev
    assert get(m, "cilium_policy_import_errors_total") == 1
    assert get(m, "cilium_identity", type="cluster_local") >= 3
    assert get(m, "cilium_endpoint_regenerations_total", outcome="success") >= 3
    assert get(m, "cilium_endpoint_regeneration_time_stats_seconds_count", scope="total", status="success") >= 3
    kv = [k for k in m if k[0] == "cilium_kvstore_operations_duration_seconds_count"
          and ("scope", "identities/v1") in k[1] and ("outcome", "success") in k[1]]
    assert kv and sum(m[k] for k in kv) > 0

    # The same counters through the API list and `cilium bpf metrics list`.
    listed = {(x["name"], frozenset(x["labels"].items())): x["value"]
              for x in agent.cli_json("metrics", "list")}
    assert listed[("cilium_policy", frozenset())] == 1
    rows = agent.cli_json("bpf", "metrics", "list")
    row = next(r for r in rows if r["reason"] == L3 and r["direction"] == "INGRESS")
    assert row["packets"] >= get(m, "cilium_drop_count_total", reason=L3, direction="INGRESS")

    # The datapath counters live in the pinned map: a restarted agent reports them still.
    agent.stop()
    agent.start()
    after = scrape(url)
    assert get(after, "cilium_drop_count_total", reason=L3, direction="INGRESS") >= \
        get(m, "cilium_drop_count_total", reason=L3, direction="INGRESS")
