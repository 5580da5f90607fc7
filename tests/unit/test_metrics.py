"""Prometheus metrics: the agent's own registry, Cilium's names and labels,
the state gauges and BPF counters read at scrape time, the API middleware,
the KV store wrapper and the /metrics server. Everything but the kernel is
real here (the API app over tests/unit/unit_daemon.py); the datapath reader
is a stand-in for the per-CPU map (its real reading is proven in
tests/privileged/test_metrics_datapath.py and tests/e2e/test_metrics.py)."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import threading

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from click.testing import CliRunner
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from docker_cilium.agent.main import main as agent_main
from docker_cilium.api.app import build_app
from docker_cilium.datapath.drop import DROP_POLICY, DROP_POLICY_L4
from docker_cilium.datapath.maps.metricsmap import METRIC_EGRESS, METRIC_INGRESS
from docker_cilium.endpoint.model import State
from docker_cilium.identity import reserved
from docker_cilium.kvstore.sqlite import SQLiteBackend
from docker_cilium.metrics import AgentMetrics
from docker_cilium.metrics.kvstore import MeteredBackend, scope_of
from docker_cilium.metrics.server import MetricsServer, build_app as build_metrics_app, parse_serve_addr
from tests.unit.unit_daemon import ENDPOINTS, UnitDaemon

POLICY = [{"endpointSelector": {"matchLabels": {"id": "app1"}},
           "ingress": [{"fromEndpoints": [{"matchLabels": {"id": "app2"}}]}], "labels": ["name=m"]}]


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """(sample name, labels) -> value, from Prometheus exposition text."""
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(text: str, name: str, **labels: str) -> float | None:
    return samples(text).get((name, frozenset(labels.items())))


async def scrape(metrics: AgentMetrics) -> str:
    body, _ = await metrics.exposition()
    return body.decode()


# --- registry --------------------------------------------------------------------------
async def test_each_agent_has_its_own_registry():
    a, b = AgentMetrics(), AgentMetrics()
    a.api_call("/v1/endpoint", "GET", 200, 0.01)
    assert value(await scrape(a), "cilium_agent_api_process_time_seconds_count",
                 path="/v1/endpoint", method="GET", return_code="200") == 1
    assert value(await scrape(b), "cilium_agent_api_process_time_seconds_count",
                 path="/v1/endpoint", method="GET", return_code="200") is None
    # Nothing lands in the process-wide default registry.
    assert not [m for m in REGISTRY.collect() if m.name.startswith("cilium_")]


async def test_datapath_counters_by_reason_and_direction_read_off_the_loop():
    metrics = AgentMetrics()
    loop_thread = threading.get_ident()
    readers: list[int] = []

    def read():
        readers.append(threading.get_ident())
        return {(0, METRIC_INGRESS): (10, 1000), (0, METRIC_EGRESS): (5, 500),
                (DROP_POLICY, METRIC_INGRESS): (3, 252), (DROP_POLICY_L4, METRIC_EGRESS): (2, 120),
                (250, 0): (1, 60), (250, 7): (1, 40)}

    metrics.set_datapath_reader(read)
    text = await scrape(metrics)
    assert readers and loop_thread not in readers  # the BPF map walk never runs on the loop
    assert value(text, "cilium_drop_count_total", reason="Policy denied (L3)", direction="INGRESS") == 3
    assert value(text, "cilium_drop_bytes_total", reason="Policy denied (L3)", direction="INGRESS") == 252
    assert value(text, "cilium_drop_count_total", reason="Policy denied (L4)", direction="EGRESS") == 2
    assert value(text, "cilium_forward_count_total", direction="INGRESS") == 10
    assert value(text, "cilium_forward_bytes_total", direction="EGRESS") == 500
    # Unknown reason: its number; unknown directions share UNKNOWN and are summed.
    assert value(text, "cilium_drop_count_total", reason="250", direction="UNKNOWN") == 2
    assert value(text, "cilium_drop_bytes_total", reason="250", direction="UNKNOWN") == 100
    # Forwarded packets are not drops.
    assert not [k for k in samples(text) if k[0] == "cilium_drop_count_total" and ("reason", "Forwarded") in k[1]]


async def test_no_datapath_means_no_drop_series():
    text = await scrape(AgentMetrics())
    assert not [k for k in samples(text) if k[0].startswith(("cilium_drop_", "cilium_forward_"))]


async def test_exposition_negotiates_openmetrics():
    metrics = AgentMetrics()
    _, plain = await metrics.exposition("")
    body, om = await metrics.exposition("application/openmetrics-text; version=1.0.0")
    assert plain.startswith("text/plain") and om.startswith("application/openmetrics-text")
    assert body.rstrip().endswith(b"# EOF")


# --- the API app: middleware, state gauges, /v1/metrics/ -------------------------------------------
@pytest.fixture
async def metered(tmp_path):
    """(client, daemon, metrics): the real API app timed into its metrics, whose
    regenerator reports to them as the agent's does."""
    daemon = await UnitDaemon(str(tmp_path)).start()
    metrics = AgentMetrics()
    daemon.regenerator.observer = metrics
    client = TestClient(TestServer(build_app(daemon, metrics)))
    await client.start_server()
    yield client, daemon, metrics
    await client.close()
    await daemon.stop()


async def test_api_calls_counted_by_route_method_and_code(metered):
    client, daemon, metrics = metered
    eid = ENDPOINTS[0][0]
    for path in ("/v1/endpoint", f"/v1/endpoint/{eid}", f"/v1/endpoint/{eid}", "/v1/endpoint/65000", "/v1/nope"):
        await client.get(path)
    text = await scrape(metrics)
    count = "cilium_agent_api_process_time_seconds_count"
    assert value(text, count, path="/v1/endpoint", method="GET", return_code="200") == 1
    # One series per route template, not per ID asked for.
    assert value(text, count, path="/v1/endpoint/{id}", method="GET", return_code="200") == 2
    assert value(text, count, path="/v1/endpoint/{id}", method="GET", return_code="404") == 1
    assert value(text, count, path="/{tail}", method="GET", return_code="404") == 1


async def test_policy_import_errors_and_regenerations(metered):
    client, daemon, metrics = metered
    bad = await client.put("/v1/policy", data=b"{not json")
    assert bad.status == 400
    unknown = await client.put("/v1/policy", data=json.dumps([{"endpointSelector": {}, "bogus": 1}]))
    assert unknown.status == 400
    text = await scrape(metrics)
    assert value(text, "cilium_policy_import_errors_total") == 2
    assert value(text, "cilium_policy") == 0
    rev = daemon.policy.revision
    assert value(text, "cilium_policy_max_revision") == rev

    ok = await client.put("/v1/policy", data=json.dumps(POLICY))
    assert ok.status == 200, await ok.text()
    text = await scrape(metrics)
    assert value(text, "cilium_policy_import_errors_total") == 2  # a good import is not an error
    assert value(text, "cilium_policy") == 1
    assert value(text, "cilium_policy_max_revision") == daemon.policy.revision == rev + 1
    # Both endpoints were regenerated for the import, and timed.
    assert value(text, "cilium_endpoint_regenerations_total", outcome="success") >= len(ENDPOINTS)
    assert value(text, "cilium_endpoint_regeneration_time_stats_seconds_count",
                 scope="total", status="success") >= len(ENDPOINTS)
    assert value(text, "cilium_policy_endpoint_enforcement_status", enforcement="ingress") == 1  # app1


async def test_endpoint_and_identity_gauges_follow_the_agent(metered):
    client, daemon, metrics = metered
    text = await scrape(metrics)
    eps = list(daemon.endpoints.endpoints.values())
    assert value(text, "cilium_endpoint") == len(eps) == len(ENDPOINTS)
    for st in State:
        assert value(text, "cilium_endpoint_state", endpoint_state=st.value) == sum(e.state == st for e in eps)
    assert value(text, "cilium_endpoint_state", endpoint_state="ready") == len(ENDPOINTS)
    assert value(text, "cilium_identity", type="reserved") == len(reserved.all_reserved())
    assert value(text, "cilium_identity", type="cluster_local") == len(ENDPOINTS)  # app1, app2

    # A state change shows at the next scrape, not later.
    eps[0].set_state(State.WAITING_TO_REGENERATE, "test")
    text = await scrape(metrics)
    assert value(text, "cilium_endpoint_state", endpoint_state="ready") == len(ENDPOINTS) - 1
    assert value(text, "cilium_endpoint_state", endpoint_state="waiting-to-regenerate") == 1


async def test_metrics_list_api_shape(metered):
    client, daemon, metrics = metered
    await client.get("/v1/endpoint")
    resp = await client.get("/v1/metrics/")
    assert resp.status == 200
    listing = await resp.json()
    assert all(set(m) == {"name", "labels", "value"} for m in listing)
    by = {(m["name"], frozenset(m["labels"].items())): m["value"] for m in listing}
    assert by[("cilium_endpoint_state", frozenset({("endpoint_state", "ready")}))] == len(ENDPOINTS)
    # A histogram is listed once, by its name, valued at its sum (Cilium's DumpMetrics).
    api = [m for m in listing if m["name"] == "cilium_agent_api_process_time_seconds"
           and m["labels"] == {"path": "/v1/endpoint", "method": "GET", "return_code": "200"}]
    assert len(api) == 1 and api[0]["value"] > 0
    assert not [m for m in listing if m["name"].endswith(("_bucket", "_count", "_created"))]
    assert ("cilium_policy_import_errors_total", frozenset()) in by


# --- KV store --------------------------------------------------------------------------------
def test_scope_of_key():
    assert scope_of("cilium/state/identities/v1/id/300") == "identities/v1"
    assert scope_of("cilium/.health") == "cilium/.heal"  # short keys: their first 12 characters


async def test_kvstore_operations_timed_and_failures_counted(tmp_path):
    metrics = AgentMetrics()
    inner = SQLiteBackend(str(tmp_path / "kv.db"))
    kv = MeteredBackend(inner, metrics)
    await kv.connect()
    await kv.put("cilium/state/identities/v1/id/300", b"x")
    assert await kv.get("cilium/state/identities/v1/id/300") == b"x"
    assert await kv.create_only("cilium/state/identities/v1/id/300", b"y") is False
    await kv.close()
    with pytest.raises(Exception):
        await kv.get("cilium/state/identities/v1/id/300")  # closed underneath: a failure
    text = await scrape(metrics)
    name = "cilium_kvstore_operations_duration_seconds_count"
    assert value(text, name, action="Update", kind="set", outcome="success", scope="identities/v1") == 1
    assert value(text, name, action="Get", kind="read", outcome="success", scope="identities/v1") == 1
    assert value(text, name, action="CreateOnly", kind="set", outcome="success", scope="identities/v1") == 1
    assert value(text, name, action="Get", kind="read", outcome="fail", scope="identities/v1") == 1


# --- --prometheus-serve-addr ---------------------------------------------------------------------------
@pytest.mark.parametrize("addr,expected", [(":9962", (None, 9962)), ("127.0.0.1:9090", ("127.0.0.1", 9090)),
                                           ("[::1]:9962", ("::1", 9962))])
def test_parse_serve_addr(addr, expected):
    assert parse_serve_addr(addr) == expected


@pytest.mark.parametrize("addr,message", [("9962", "expected HOST:PORT"), (":0", "port must be"),
                                          (":http", "port must be"), ("::1:9962", "brackets"),
                                          ("[nothost]:1", "not an IPv6 address")])
def test_parse_serve_addr_refuses(addr, message):
    with pytest.raises(ValueError, match=message):
        parse_serve_addr(addr)


def test_agent_flag_refuses_a_bad_address():
    res = CliRunner().invoke(agent_main, ["--prometheus-serve-addr", "localhost"])
    assert res.exit_code == 2 and "--prometheus-serve-addr" in res.output and "HOST:PORT" in res.output


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_metrics_server_serves_over_http():
    metrics = AgentMetrics()
    metrics.api_call("/v1/healthz", "GET", 200, 0.002)
    port = _free_port()
    server = MetricsServer(metrics, f"127.0.0.1:{port}")
    await server.start()
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
                assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/plain")
                text = await resp.text()
            async with http.get(f"http://127.0.0.1:{port}/other") as resp:
                assert resp.status == 404
    finally:
        await server.stop()
    assert value(text, "cilium_agent_api_process_time_seconds_count",
                 path="/v1/healthz", method="GET", return_code="200") == 1
    assert value(text, "cilium_process_open_fds") is not None
    with pytest.raises(OSError):  # stopped: the port is closed
        await asyncio.open_connection("127.0.0.1", port)


async def test_a_failing_scrape_is_a_500_and_the_server_keeps_serving():
    metrics = AgentMetrics()
    calls = []

    def read():
        calls.append(1)
        if len(calls) == 1:
            raise OSError(9, "Bad file descriptor")
        return {(0, METRIC_INGRESS): (1, 60)}

    metrics.set_datapath_reader(read)
    client = TestClient(TestServer(build_metrics_app(metrics)))
    await client.start_server()
    try:
        first = await client.get("/metrics")
        assert first.status == 500 and "Bad file descriptor" in await first.text()
        second = await client.get("/metrics")
        assert second.status == 200
        assert value(await second.text(), "cilium_forward_count_total", direction="INGRESS") == 1
    finally:
        await client.close()


@pytest.mark.parametrize("host", ["127.0.0.1", "[::1]"])
async def test_a_taken_port_is_an_error_naming_the_flag(host):
    taken = socket.socket(socket.AF_INET6 if host.startswith("[") else socket.AF_INET)
    taken.bind((host.strip("[]"), 0))
    taken.listen()
    addr = f"{host}:{taken.getsockname()[1]}"
    server = MetricsServer(AgentMetrics(), addr)
    try:
        with pytest.raises(RuntimeError, match=rf"^--prometheus-serve-addr {re.escape(addr)}: .*in use"):
            await server.start()
    finally:
        await server.stop()
        taken.close()
