"""Large policies on the real agent (issue 6 item 4): plugin calls are still
answered while 10,000 rules are imported, and a container selected by 4,000
CIDR rules is set up quickly.

The latency bound is the requirement itself (dockerd's calls must not hang
during an import), with room for a loaded 2-core machine; the precise figures
are bench/policy_scale.py's (see its docstring for the command).
"""

from __future__ import annotations

import json
import threading
import time

from bench.policy_scale import cidr_rules, create_endpoint_ms, request
from tests.e2e.conftest import create_network, run_container
from tests.helpers import wait_until

# The requirement is < 50 ms; the bound leaves room for a loaded machine and
# is still far below what the old code did (seconds, or a 413 for 10k rules).
MAX_PLUGIN_LATENCY_S = 0.2
MAX_CREATE_ENDPOINT_MS = 1000


def test_plugin_calls_answered_during_10k_rule_import(agent, names):
    net = create_network(names("net"), "--driver", "cilium", "--ipam-driver", "cilium")
    run_container(names("app"), net, "-l", "id=scale-app")  # an endpoint every rule selects
    # (start, duration, status) per plugin call; ``current`` is the start of
    # the call under way, so a call that never returns is measured too.
    calls: list[tuple[float, float, int | str]] = []
    current: list[float] = []
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            t0 = time.perf_counter()
            current[:] = [t0]
            try:
                status: int | str = request(agent.plugin_socket, "POST", "/Plugin.Activate", b"{}")[0]
            except OSError as exc:  # recorded, checked in the test's thread
                status = repr(exc)
            calls.append((t0, time.perf_counter() - t0, status))
            current[:] = []

    thread = threading.Thread(target=hammer, daemon=True)
    thread.start()
    try:
        time.sleep(0.2)
        t0 = time.perf_counter()
        status, reply = request(agent.api_socket, "PUT", "/v1/policy", json.dumps(cidr_rules(10000)).encode())
        t1 = time.perf_counter()
    finally:
        stop.set()
        thread.join(timeout=MAX_PLUGIN_LATENCY_S + 5)
    try:
        assert not thread.is_alive(), (
            f"a plugin call has not returned after {time.perf_counter() - current[0]:.1f}s" if current else
            "the plugin caller did not stop")
        assert status == 200, reply[:300]
        during = [c for c in calls if t0 <= c[0] <= t1]
        assert len(during) > 20, f"only {len(during)} plugin calls during a {t1 - t0:.1f}s import"
        assert all(c[2] == 200 for c in calls), [c for c in calls if c[2] != 200][:3]
        slowest = max(d for _, d, _ in during)
        assert slowest < MAX_PLUGIN_LATENCY_S, (
            f"a plugin call waited {slowest * 1000:.0f} ms during a {t1 - t0:.1f}s 10k-rule import")
        revision = json.loads(reply)["revision"]
        eps = [e for e in agent.cli_json("endpoint", "list") if "container:id=scale-app" in e["labels"]["effective"]]
        assert [(e["policy"]["revision"], e["policy"]["egress-enforced"]) for e in eps] == [(revision, True)]
    finally:
        agent.cli("policy", "delete", "--all")


def test_endpoint_setup_with_4k_cidr_rules_in_place(agent, names):
    status, reply = request(agent.api_socket, "PUT", "/v1/policy", json.dumps(cidr_rules(4000)).encode())
    assert status == 200, reply[:300]
    try:
        net = create_network(names("net"), "--driver", "cilium", "--ipam-driver", "cilium")
        before = len(create_endpoint_ms(agent))
        run_container(names("app"), net, "-l", "id=scale-app")
        took = wait_until(lambda: create_endpoint_ms(agent)[before:], what="CreateEndpoint in the agent log")
        assert took[0] < MAX_CREATE_ENDPOINT_MS, f"CreateEndpoint took {took[0]:.0f} ms with 4000 CIDR rules"
    finally:
        agent.cli("policy", "delete", "--all")
