"""The property-based fuzzing of tests/unit/test_fuzz_properties.py, shorter,
against a real agent (its datapath, BPF maps, KV store) over its two unix
sockets, including what the in-process run leaves out: /v1/healthz (the real
Daemon.status) and the datapath's /v1/map.

Same properties: no 5xx, every rejection the socket's JSON error with a
short non-empty message, no state change from a rejected request (here read
through the API: endpoints, IPAM, policy revision and rules, services,
prefilter), and the agent's status still Ok afterwards; and a
body announced as 1 GiB is a 413 on both unix sockets.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
from hypothesis import given, settings, strategies as st

from docker_cilium.cli.client import _UnixConnection
from tests.unit.test_fuzz_properties import (ALL_OPERATIONS, EP, FUZZ, MAX_MESSAGE, NETWORK, OVERSIZED,
                                             PLUGIN_METHODS, TEMPLATES, _api_case, assert_413, bodies, cases,
                                             oversized_request)

# A real agent answers in milliseconds, not microseconds: fewer examples here.
SHORT = settings(FUZZ, max_examples=int(os.environ.get("CILIUM_FUZZ_EXAMPLES", "0")) or 150)
CASES = cases([op for op in ALL_OPERATIONS if op.path != "/monitor"])  # a stream: ends only when the client leaves
# Identities are left out here: a real agent allocates and collects CIDR identities
# in the background after a policy change (the unit run compares them).
STATE_PATHS = ["/v1/endpoint", "/v1/policy", "/v1/service", "/v1/prefilter"]
# An endpoint's fields a request could change (its status log moves with regenerations).
ENDPOINT_FIELDS = ("id", "docker-endpoint-id", "docker-network-id", "addressing", "labels", "policy-enforcement")


def _call(path: str, method: str, url: str, body: bytes | None, headers: dict[str, str] | None = None
          ) -> tuple[int, str, bytes]:
    conn = _UnixConnection(path, 30)
    try:
        conn.request(method, url, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Type", ""), resp.read()
    finally:
        conn.close()


def _state(agent) -> dict[str, Any]:
    state: dict[str, Any] = {}
    for path in STATE_PATHS:
        status, _, raw = _call(agent.api_socket, "GET", path, None)
        assert status < 500, (path, raw[:300])
        state[path] = (status, json.loads(raw))  # the prefilter is a 404 when not enabled
    status, endpoints = state["/v1/endpoint"]
    state["/v1/endpoint"] = (status, [{k: ep.get(k) for k in ENDPOINT_FIELDS} for ep in endpoints])
    status, _, raw = _call(agent.api_socket, "GET", "/v1/healthz", None)
    assert status == 200, raw[:300]
    health = json.loads(raw)
    state["ipam"] = health["ipam"]
    assert health["cilium"]["state"] == "Ok", health["cilium"]
    return state


def _check(agent, case: str, status: int, content_type: str, raw: bytes, before: dict[str, Any], plugin: bool) -> None:
    assert status < 500, f"{case}\n -> {status} {raw[:300]!r}"
    if status >= 400 or (plugin and status != 200):
        reply = json.loads(raw)
        message = reply["Err"] if plugin else reply["message"]
        assert isinstance(message, str) and message.strip() and len(message) <= MAX_MESSAGE, f"{case}\n -> {raw[:300]!r}"
        if not plugin:
            assert reply["code"] == status and content_type.startswith("application/json"), case
        after = _state(agent)
        assert after == before, f"{case}\n -> {status} {message[:200]}\n changed: " + \
            ", ".join(k for k in before if before[k] != after[k])


def test_plugin_methods_on_a_real_agent(agent):
    seen = []

    @SHORT
    @given(data=st.data())
    def fuzz(data):
        method = data.draw(st.sampled_from(PLUGIN_METHODS), label="method")
        raw = data.draw(bodies(TEMPLATES.get(method, {"NetworkID": NETWORK, "EndpointID": EP})), label="body")
        before = _state(agent)
        status, ctype, reply = _call(agent.plugin_socket, "POST", f"/{method}", raw)
        _check(agent, f"{method} {raw[:200]!r}", status, ctype, reply, before, plugin=True)
        seen.append(status)

    fuzz()
    _state(agent)  # still Ok
    assert len(seen) >= SHORT.max_examples and any(s != 200 for s in seen) and 200 in seen, sorted(set(seen))


def test_api_routes_on_a_real_agent(agent):
    seen = []

    @SHORT
    @given(case=CASES)
    def fuzz(case):
        method, url, raw, headers = _api_case(case)
        before = _state(agent)
        status, ctype, reply = _call(agent.api_socket, method, str(url), raw, headers)
        _check(agent, f"{method} {str(url)[:200]} {(raw or b'')[:200]!r}", status, ctype, reply, before, plugin=False)
        seen.append(status)

    fuzz()
    _state(agent)
    assert len(seen) >= SHORT.max_examples and {200, 400} <= set(seen), sorted(set(seen))


@pytest.mark.parametrize("method,path,send", [case for case in OVERSIZED if "/endpoint/" not in case[1]])
def test_oversized_body_is_413_on_a_real_agent(agent, method, path, send):
    """Both unix sockets: a body announced as 1 GiB is refused after a little over the limit."""
    plugin = not path.startswith("/v1/")
    before = _state(agent)
    assert_413(oversized_request(agent.plugin_socket if plugin else agent.api_socket, method, path, send), plugin)
    assert _state(agent) == before
