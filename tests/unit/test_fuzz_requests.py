"""Odd frames and bodies on both sockets: never a 500, and the agent keeps serving.

Both aiohttp applications run in front of the agent's real objects
(tests/unit/unit_daemon.py: EndpointManager, IPAM, identities, policy), one
daemon behind both, as in the agent. A deterministic generator (seeded, so a
failure replays) sends every plugin method and every REST route bodies that
are not JSON, not UTF-8, too deep, NaN/Infinity, duplicate keys, huge
strings and numbers, and valid requests with one field swapped for a value
of the wrong type; paths get odd percent-encodings and lengths. After each
request both sockets must still answer a known-good call.

/v1/healthz is left out: it is the real Daemon.status, which needs the
datapath (checked on a real agent in tests/e2e/test_etcd_agent.py).
"""

from __future__ import annotations

import json
import random
from typing import Any, Iterator

import pytest
from aiohttp.test_utils import TestClient

from docker_cilium.plugin.schemas import EMPTY_BODY, IPAM_REQUESTS, NETWORK_REQUESTS
from tests.unit.unit_daemon import NETWORK, NODE

SEED = 6
EP = "e" * 64

ODD_VALUES: list[Any] = [
    None, True, False, 0, -1, 2 ** 70, -(2 ** 63), 1.5, -0.0, 1e308, float("inf"), float("nan"), "Infinity", "", " ", "x" * 100_000, "\u00b2", "\u0663\u0660",
    "\ud800", "\x00", "%00", "../../etc/passwd", "10.2.0.2", "10.2.0.2/32", "f00d::a02:0:0:3e9/128", "8.8.8.8/32",
    "0.0.0.0/0", "::/0", "CiliumPoolv4", "CiliumPoolv6:10.2.0.0/24", [], {}, [[]], [None], [{}], {"": None},
    {"a": {"b": {"c": []}}}, ["x"] * 1000, {f"k{i}": i for i in range(1000)},
]

SMALL_ODD_VALUES = [v for v in ODD_VALUES if len(json.dumps(v)) < 100]

# Bodies that are not the JSON a caller may send, each a 400 (or ignored by a body-less call).
RAW_BODIES: list[bytes] = [
    b"", b" \n", b"null", b"0", b"-1", b"true", b'"a string"', b"[]", b"{}", b"[{}]",
    b"\xff\xfe\x00", b"\xc3\x28", b'{"NetworkID": "\xff"}', "{}".encode("utf-16"), b"\xef\xbb\xbf{}",
    b"NaN", b"Infinity", b"-Infinity", b'{"x": NaN}', b'{"x": Infinity}', b"1e400", b'{"x": -1e400}',
    b"9" * 5000, b'{"x": ' + b"9" * 5000 + b"}",
    b"[" * 200_000, b"{" * 200_000, b'{"a":' * 100_000, b"[" * 65 + b"]" * 65, b'{"a":[' * 40 + b"]}" * 40,
    b'{"NetworkID": "a", "NetworkID": 7}', b'{"a": "\\ud800"}', b'{"a": "\\udc00\\ud800"}', b'"\\ud83d\\ude00"',
    b"{} trailing", b"\x00", b"[1,]", b'{"a" 1}', b"{'a': 1}", b'{"a": "' + b"\\" * 10_001 + b'"}',
    b'"' + b"[" * 100_000 + b'"', b"[" + b'"x",' * 50_000 + b'"x"]',
]

V4_DATA = {"AddressSpace": "CiliumLocal", "Pool": "0.0.0.0/0", "Gateway": f"{NODE.router4}/32"}
TEMPLATES: dict[str, dict[str, Any]] = {
    "NetworkDriver.CreateNetwork": {
        "NetworkID": "f" * 64, "IPv4Data": [V4_DATA], "IPv6Data": [],
        "Options": {"com.docker.network.enable_ipv6": False,
                    "com.docker.network.generic": {"com.docker.network.driver.mtu": "1400"}}},
    "NetworkDriver.CreateEndpoint": {
        "NetworkID": NETWORK, "EndpointID": EP, "Options": {},
        "Interface": {"Address": "10.2.0.77/32", "AddressIPv6": "", "MacAddress": ""}},
    "NetworkDriver.Join": {"NetworkID": NETWORK, "EndpointID": f"{1001:064d}", "SandboxKey": "/x", "Options": {}},
    "NetworkDriver.DiscoverNew": {"DiscoveryType": 1, "DiscoveryData": {"Address": "10.0.0.1"}},
    "IpamDriver.RequestPool": {"AddressSpace": "CiliumLocal", "Pool": "10.2.7.0/24", "SubPool": "10.2.7.0/25",
                               "Options": {}, "V6": False},
    "IpamDriver.RequestAddress": {"PoolID": "CiliumPoolv4:10.2.7.0/24", "Address": "10.2.7.9", "Options": {}},
    "IpamDriver.ReleaseAddress": {"PoolID": "CiliumPoolv4", "Address": "10.2.0.2"},
    "IpamDriver.ReleasePool": {"PoolID": "CiliumPoolv6"},
}
PLUGIN_METHODS = sorted({"Plugin.Activate", *EMPTY_BODY, *(f"NetworkDriver.{m}" for m in NETWORK_REQUESTS),
                         *(f"IpamDriver.{m}" for m in IPAM_REQUESTS)})

# REST routes with placeholders; each {param} is filled from PATH_VALUES.
REST_ROUTES = [
    ("GET", "/v1/config"), ("PATCH", "/v1/config"), ("GET", "/v1/endpoint"), ("GET", "/v1/endpoint/{id}"),
    ("PATCH", "/v1/endpoint/{id}"), ("GET", "/v1/endpoint/{id}/labels"), ("PATCH", "/v1/endpoint/{id}/labels"),
    ("GET", "/v1/endpoint/{id}/config"), ("PATCH", "/v1/endpoint/{id}/config"), ("GET", "/v1/identity"),
    ("GET", "/v1/identity/{id}"), ("POST", "/v1/ipam"), ("POST", "/v1/ipam/{id}"), ("DELETE", "/v1/ipam/{id}"),
    ("GET", "/v1/openapi.json"), ("GET", "/v1/policy"), ("PUT", "/v1/policy"), ("DELETE", "/v1/policy"),
    ("GET", "/v1/policy/resolve"), ("POST", "/v1/endpoint/{id}"), ("GET", "/v1/{id}"),
]
PATH_VALUES = [
    "1001", "%C2%B2", "cilium-local:%C2%B2", "%D9%A3", "%EF%BC%91", "0", "65535", "65536", "-1", "+1", "1_0", "0x10",
    "9" * 5000, "%FF", "%00", "%2F", "%25", "%", "%zz", "container-name:app1", "container-id:", "x:y:z", ":",
    "cilium-local:", "docker-endpoint:%00", "10.2.0.250", "f00d::a02:0:0:fff0", "8.8.8.8", "::", "..", "a" * 7000,
    "%F0%9F%98%80", "%ED%A0%80",
]
QUERIES = ["", "?labels=%FF", "?labels=" + "a," * 2000, "?family=ipv7", "?family=%00", "?all=maybe", "?all=true",
           "?owner=" + "o" * 3000, "?from=a&to=b&dports=%C2%B2", "?dports=99999999999999999999", "?x=1&x=2",
           "?from=a&to=b&dports=80/%FF"]


def _paths(value: Any, prefix: tuple = ()) -> Iterator[tuple]:
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in items:
        yield prefix + (key,)
        yield from _paths(child, prefix + (key,))


def _mutations(template: dict[str, Any], values: list[Any] = ODD_VALUES) -> Iterator[bytes]:
    """``template`` with each field (at any depth) in turn replaced by every
    odd value, dropped, or given an unknown sibling."""
    for path in _paths(template):
        for change in [*range(len(values)), "drop", "add"]:
            body = json.loads(json.dumps(template))
            parent = body
            for step in path[:-1]:
                parent = parent[step]
            if change == "drop" and isinstance(parent, dict):
                del parent[path[-1]]
            elif change == "add" and isinstance(parent, dict):
                parent["Unknown"] = "x"
            elif isinstance(change, int):
                parent[path[-1]] = values[change]
            else:
                continue
            yield json.dumps(body).encode()


def plugin_cases(rng: random.Random) -> Iterator[tuple[str, bytes]]:
    for method in PLUGIN_METHODS:
        for raw in RAW_BODIES:
            yield f"/{method}", raw
        for value in ODD_VALUES[:12]:
            yield f"/{method}", json.dumps(value).encode()
        template = TEMPLATES.get(method, {"NetworkID": NETWORK, "EndpointID": EP})
        yield f"/{method}", json.dumps(template).encode()
        yield from ((f"/{method}", body) for body in _mutations(template))
    for path in ["/", "/%FF", "/NetworkDriver.%C2%B2", "/" + "N" * 7000, "/IpamDriver.", "/.", "/a/b", "/%00"]:
        yield path, b"{}"


def rest_cases(rng: random.Random) -> Iterator[tuple[str, str, bytes]]:
    for method, route in REST_ROUTES:
        paths = [route.replace("{id}", value) for value in PATH_VALUES] if "{id}" in route else [route]
        for path in paths:
            yield method, path + rng.choice(QUERIES), rng.choice(RAW_BODIES[:12])
        for query in QUERIES:
            yield method, paths[0] + query, b""
        for raw in RAW_BODIES:
            yield method, paths[0], raw
        for value in rng.sample(ODD_VALUES, 12):
            yield method, paths[0], json.dumps(value).encode()
    for body in _mutations({"labels": ["k=v"], "policy-enforcement": "default"}, SMALL_ODD_VALUES):
        yield "PATCH", "/v1/endpoint/1002", body
    for body in _mutations({"options": {"PolicyEnforcement": "default"}}, SMALL_ODD_VALUES):
        yield "PATCH", "/v1/config", body
    for body in _mutations({"from": {"labels": ["id=app1"]}, "to": {"labels": ["id=app2"], "dports": [
            {"port": 80, "protocol": "TCP"}]}, "dports": ["80/TCP"]}, SMALL_ODD_VALUES):
        yield "GET", "/v1/policy/resolve", body
    rule = {"endpointSelector": {"matchLabels": {"id": "app1"}},
            "ingress": [{"toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}]}]}]}
    for body in _mutations(rule, SMALL_ODD_VALUES):
        yield "PUT", "/v1/policy", b"[" + body + b"]"


@pytest.fixture
def sockets(api, daemon_plugin):
    client, daemon = api
    return client, daemon_plugin, daemon


async def _still_serving(api: TestClient, plugin: TestClient, after: str) -> None:
    resp = await plugin.post("/NetworkDriver.GetCapabilities", data=b"")
    assert resp.status == 200, f"plugin stopped serving after {after}"
    resp = await api.get("/v1/endpoint/1002")
    assert resp.status == 200 and (await resp.json())["id"] == 1002, f"API stopped serving after {after}"


def _shown(path: str, raw: bytes) -> str:
    return f"{path[:120]} {raw[:120]!r}{'...' if len(raw) > 120 else ''}"


async def test_plugin_socket_never_answers_500(sockets):
    api, plugin, _ = sockets
    failures: dict[str, str] = {}  # distinct reply -> the first case that got it
    seen = 0
    for path, raw in plugin_cases(random.Random(SEED)):
        resp = await plugin.post(path, data=raw)
        text = await resp.text()
        case = _shown(path, raw)
        if resp.status == 500:
            failures.setdefault(" ".join(text.split())[:160], case)
        elif resp.status != 200 and resp.content_type != "text/plain":  # text: aiohttp's own 404/400
            assert json.loads(text)["Err"], case
        seen += 1
        await _still_serving(api, plugin, case)
    assert not failures, "answered 500:\n" + "\n".join(f"{case}\n  -> {reply}" for reply, case in failures.items())
    assert seen > 1500


async def test_rest_socket_never_answers_500(sockets):
    api, plugin, _ = sockets
    failures: dict[str, str] = {}  # distinct reply -> the first case that got it
    seen = 0
    for method, path, raw in rest_cases(random.Random(SEED)):
        resp = await api.request(method, path, data=raw)
        text = await resp.text()
        case = f"{method} {_shown(path, raw)}"
        if resp.status == 500:
            failures.setdefault(" ".join(text.split())[:160], case)
        elif resp.status >= 400 and resp.content_type == "application/json":
            body = json.loads(text)
            assert body["code"] == resp.status and body["message"], case
        seen += 1
        await _still_serving(api, plugin, case)
    assert not failures, "answered 500:\n" + "\n".join(f"{case}\n  -> {reply}" for reply, case in failures.items())
    assert seen > 1500
