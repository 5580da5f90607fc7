"""`cilium metrics list` against the real API app (tests/unit/test_cli.py's
served UnitDaemon) and `cilium bpf metrics list` against a stand-in map."""

from __future__ import annotations

import json

import pytest

from docker_cilium.cli import bpf as bpf_cli
from docker_cilium.datapath.drop import DROP_POLICY
from docker_cilium.datapath.maps.metricsmap import METRIC_EGRESS, METRIC_INGRESS
from tests.unit.test_cli import agent, run  # noqa: F401  (the fixture is used by name)


class FakeMetricsMaps:
    def __init__(self, counters):
        self.metrics = type("M", (), {"dump": staticmethod(lambda: dict(counters))})()
        self.closed = False

    def close(self):
        self.closed = True


@pytest.fixture
def metrics_maps(monkeypatch):
    def install(counters):
        maps = FakeMetricsMaps(counters)
        monkeypatch.setattr(bpf_cli, "open_maps", lambda root: maps)
        return maps
    return install


def test_bpf_metrics_list_table_and_json(metrics_maps):
    maps = metrics_maps({(DROP_POLICY, METRIC_INGRESS): (3, 252), (0, METRIC_EGRESS): (7, 700),
                         (0, METRIC_INGRESS): (9, 900)})
    res = run(None, "bpf", "metrics", "list")
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0].split() == ["REASON", "DIRECTION", "PACKETS", "BYTES"]
    assert lines[1].split() == ["Forwarded", "INGRESS", "9", "900"]
    assert lines[2].split() == ["Forwarded", "EGRESS", "7", "700"]
    assert lines[3].split() == ["Policy", "denied", "(L3)", "INGRESS", "3", "252"]
    assert maps.closed
    out = json.loads(run(None, "bpf", "metrics", "list", "-o", "json").output)
    assert out[-1] == {"reason": "Policy denied (L3)", "reason-code": DROP_POLICY, "direction": "INGRESS",
                       "packets": 3, "bytes": 252}


def test_bpf_metrics_list_empty(metrics_maps):
    metrics_maps({})
    res = run(None, "bpf", "metrics", "list")
    assert res.exit_code == 0 and "No entries found." in res.output
    assert json.loads(run(None, "bpf", "metrics", "list", "-o", "json").output) == []


def test_metrics_list_from_the_agent(agent):  # noqa: F811
    sock, daemon = agent
    run(sock, "endpoint", "list")
    res = run(sock, "metrics", "list")
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0].split() == ["Metric", "Labels", "Value"]
    ready = [line for line in lines if line.startswith("cilium_endpoint_state ") and "endpoint_state=ready" in line]
    assert len(ready) == 1 and ready[0].split()[-1] == f"{len(daemon.endpoints.endpoints):f}"
    out = json.loads(run(sock, "metrics", "list", "-p", "^cilium_agent_api", "-o", "json").output)
    assert out and {m["name"] for m in out} == {"cilium_agent_api_process_time_seconds"}
    assert {"path": "/v1/endpoint", "method": "GET", "return_code": "200"} in [m["labels"] for m in out]
    bad = run(sock, "metrics", "list", "-p", "(")
    assert bad.exit_code == 2 and "--match-pattern" in bad.output


def test_metrics_list_agent_down():
    res = run(None, "metrics", "list")
    assert res.exit_code == 1 and "agent running?" in res.output.lower() and "Traceback" not in res.output
