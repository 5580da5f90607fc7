"""Property-based fuzzing of both sockets (hypothesis, and schemathesis over
the agent's own OpenAPI document).

Both aiohttp applications run in process over the agent's real objects
(tests/unit/unit_daemon.py: EndpointManager, IPAM, identities, policy,
services, prefilter; only netlink and BPF maps are absent), one daemon behind
both, as in the agent. For every plugin method and every REST route,
generated bodies (random JSON with odd unicode, numbers out of every range,
NaN, huge strings and arrays, deep nesting, duplicate keys, raw bytes, and
valid requests with fields replaced, dropped or added) must get:

- no 5xx: bad input is the caller's fault, and a 500 means a bug;
- a rejection that is the socket's JSON error (``{"Err"}`` on the plugin
  socket, ``{"code", "message"}`` on the API) with a short, non-empty message;
- no state change from a rejected request: the store's every key, the IPAM
  allocations, endpoints, policy revision, services, identities and the
  prefilter compared before and after;
- the agent still answering afterwards.

A body over the size limit is a 413 before the server has read it whole: the
request announces 1 GiB and sends only a little over the limit.

Examples are derandomized (same cases on every run, so CI is reproducible)
and kept small for ``make test``; ``CILIUM_FUZZ=soak`` runs many more with a
random seed (``CILIUM_FUZZ_EXAMPLES`` per test, 20,000 unless set). /v1/healthz (the real Daemon.status needs a datapath) and
/v1/monitor (a stream that only ends when the client leaves) are left out
here; both are exercised on a real agent by tests/e2e.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import socket
from typing import Any, Iterator

import pytest
import schemathesis
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, event, given, settings, strategies as st
from schemathesis.core import NotSet
from schemathesis.generation import GenerationMode
from yarl import URL

from docker_cilium import errors
from docker_cilium.api.app import build_app as build_api_app
from docker_cilium.api.openapi import __file__ as openapi_module
from docker_cilium.plugin.app import build_app as build_plugin_app
from docker_cilium.plugin.ipam import IpamDriver
from docker_cilium.plugin.network import NetworkDriver
from docker_cilium.policy.manager import MAX_IMPORT_BYTES
from tests.unit.test_fuzz_requests import EP, PLUGIN_METHODS, TEMPLATES, _paths
from tests.unit.unit_daemon import NETWORK, NODE, UnitDaemon

_COMMON = dict(derandomize=True, database=None, deadline=None, print_blob=True,
               suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                      HealthCheck.data_too_large, HealthCheck.large_base_example,
                                      HealthCheck.filter_too_much])
settings.register_profile("cilium-ci", max_examples=300, **_COMMON)
settings.register_profile("cilium-soak", **{**_COMMON, "derandomize": False,
                                           "max_examples": int(os.environ.get("CILIUM_FUZZ_EXAMPLES", "20000"))})
FUZZ = settings.get_profile("cilium-soak" if os.environ.get("CILIUM_FUZZ") == "soak" else "cilium-ci")

OPENAPI = os.path.join(os.path.dirname(openapi_module), "openapi.json")
SKIPPED_PATHS = {"/healthz", "/monitor"}  # see the module docstring
# A rejection names the problem; it does not echo a huge input back (APIError
# cuts its message at errors.MAX_MESSAGE and adds how many characters more;
# the plugin socket puts the method's name before a request's error).
MAX_MESSAGE = errors.MAX_MESSAGE + 100

# ---- values ---------------------------------------------------------------------------------------------------

# Strings the handlers parse (addresses, pool IDs, endpoint IDs, labels), so
# generated bodies also get past the schema into the drivers' own checks.
PLAUSIBLE = st.sampled_from([
    NETWORK, EP, f"{1001:064d}", f"{1002:064d}", "10.2.0.2", "10.2.0.99", "10.2.0.2/32", "10.2.0.0/16",
    "f00d::a02:0:0:3e9", f"{NODE.router4}/32", "0.0.0.0/0", "::/0", "CiliumLocal", "CiliumPoolv4", "CiliumPoolv6",
    "CiliumPoolv4:10.2.0.0/24", "02:42:ac:11:00:02", "container:id=app1", "k=v", "reserved:host", "1001", "80/TCP",
    "default", "always", "never", "ipv4", "ipv6", "true", "/var/run/docker/netns/x", "",
])
ODD_TEXT = st.one_of(
    st.text(max_size=40),
    st.text(st.characters(codec="utf-8", categories=["Nd", "No", "Cf", "Co", "Mn", "Zs", "Cc"]), max_size=20),
    st.sampled_from(["\u0663\u0660", "\u00b2", "\uff11", "\u202e", "\x00", "%00", "..", "\U0001f600", "\ufeff"]),
    st.builds(lambda c, n: c * n, st.characters(codec="utf-8"), st.integers(1_000, 300_000)),  # huge
)
NUMBERS = st.one_of(st.integers(-(2 ** 80), 2 ** 80), st.sampled_from([0, -1, 65535, 65536, 2 ** 32, 2 ** 63, 2 ** 64]),
                    st.floats(allow_nan=True, allow_infinity=True))
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, ODD_TEXT, PLAUSIBLE)
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.one_of(ODD_TEXT, PLAUSIBLE), inner, max_size=4), max_leaves=12)
HUGE = st.one_of(
    st.builds(lambda v, n: [v] * n, SCALARS.filter(lambda v: not isinstance(v, str) or len(v) < 100),
              st.integers(1_000, 60_000)),
    st.builds(lambda n: {f"k{i}": i for i in range(n)}, st.integers(1_000, 20_000)),
)


def _nest(value: Any, depth: int, kind: str) -> Any:
    for _ in range(depth):
        value = [value] if kind == "list" else {"a": value}
    return value


DEEP = st.builds(_nest, SCALARS, st.integers(20, 300), st.sampled_from(["list", "dict"]))
VALUES = st.one_of(SCALARS, JSON, HUGE, DEEP)
# Deeper than any encoder here can write: built as text.
DEEP_RAW = st.builds(lambda n, open_, close: open_ * n + b"1" + close * n, st.integers(300, 200_000),
                     st.sampled_from([b"[", b'{"a":']), st.sampled_from([b"]", b"}", b""]))


def _dump(value: Any) -> bytes:
    """JSON as a careless client writes it: NaN/Infinity included, lone surrogates escaped."""
    return json.dumps(value).encode()


def _with_duplicate(body: dict[str, Any], key: str, first: Any) -> bytes:
    """``body`` as JSON text with ``key`` written twice, ``first`` before the real value."""
    return b"{" + _dump(key) + b": " + _dump(first) + b", " + _dump(body)[1:] if body else _dump({key: first})


@st.composite
def mutated(draw: st.DrawFn, template: dict[str, Any], values: st.SearchStrategy[Any]) -> bytes:
    """``template`` (a valid request) with one to three fields, at any depth,
    replaced by one of ``values``, dropped, or given an extra sibling; or sent
    with a key written twice."""
    body = copy.deepcopy(template)
    for _ in range(draw(st.integers(1, 3))):
        paths = list(_paths(body))
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = body
        for step in path[:-1]:
            parent = parent[step]
        action = draw(st.sampled_from(["replace", "drop", "extra"]))
        if action == "drop" and isinstance(parent, dict):
            del parent[path[-1]]
        elif action == "extra" and isinstance(parent, dict):
            parent[draw(st.one_of(ODD_TEXT, PLAUSIBLE))] = draw(values)
        else:
            parent[path[-1]] = draw(values)
    if body and draw(st.booleans()):
        return _with_duplicate(body, draw(st.sampled_from(sorted(body))), draw(values))
    return _dump(body)


def bodies(template: dict[str, Any] | None) -> st.SearchStrategy[bytes]:
    """Raw bytes, any JSON value, or (when there is one) a damaged valid request."""
    choices = [st.binary(max_size=300), DEEP_RAW, VALUES.map(_dump)]
    if template:
        # Weighted: these reach the handlers, plausible values past the schema into the drivers.
        choices += [mutated(template, VALUES), mutated(template, PLAUSIBLE), mutated(template, PLAUSIBLE)]
    return st.one_of(choices)


# ---- the agent in process ---------------------------------------------------------------------------------------

class Harness:
    """The daemon and both sockets on a loop of their own, so hypothesis's
    synchronous examples can drive them one request at a time."""

    def __init__(self, workdir: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.workdir = workdir

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    async def start(self) -> "Harness":
        self.daemon = await UnitDaemon(self.workdir).start()
        self.api = TestClient(TestServer(build_api_app(self.daemon)))
        self.plugin = TestClient(TestServer(build_plugin_app(NetworkDriver(self.daemon.endpoints),
                                                             IpamDriver(self.daemon.ipam))))
        await self.api.start_server()
        await self.plugin.start_server()
        return self

    async def stop(self) -> None:
        self.daemon.monitor.close()
        await self.api.close()
        await self.plugin.close()
        await self.daemon.stop()

    async def snapshot(self) -> dict[str, Any]:
        """Everything a request could change: every stored key and the in-memory views."""
        d = self.daemon
        return {
            "store": await d.store.get_prefix(""),
            "ipam": copy.deepcopy(d.ipam.allocations()),
            "endpoints": sorted(repr(ep) for ep in d.endpoints.list()),
            "policy-revision": d.policy.revision,
            "services": sorted(repr(svc) for svc in d.services.services()),
            "identities": sorted(repr(i) for i in d.identities.identities()),
            "prefilter": copy.deepcopy(d.prefilter.model()) if d.prefilter else None,
        }

    async def still_serving(self, case: str) -> None:
        resp = await self.plugin.post("/NetworkDriver.GetCapabilities", data=b"")
        assert resp.status == 200, f"plugin stopped serving after {case}"
        resp = await self.api.get("/v1/config")
        assert resp.status == 200, f"API stopped serving after {case}"


@pytest.fixture
def harness(tmp_path) -> Iterator[Harness]:
    h = Harness(str(tmp_path))
    h.run(h.start())
    try:
        yield h
    finally:
        h.run(h.stop())
        h.loop.close()


def _shown(what: str, raw: bytes | None) -> str:
    raw = raw or b""
    return f"{what[:200]} {raw[:200]!r}{f'... ({len(raw)} bytes)' if len(raw) > 200 else ''}"


def _diff(before: dict[str, Any], after: dict[str, Any]) -> str:
    return ", ".join(key for key in before if before[key] != after[key])


# ---- plugin socket ----------------------------------------------------------------------------------------------

async def _plugin_call(h: Harness, method: str, raw: bytes) -> None:
    case = _shown(method, raw)
    before = await h.snapshot()
    resp = await h.plugin.post(f"/{method}", data=raw)
    text = await resp.text()
    event(f"{method} -> {resp.status}")  # --hypothesis-show-statistics: how far the bodies got
    assert resp.status < 500, f"{case}\n -> {resp.status} {text[:300]}"
    if resp.status != 200:
        assert resp.content_type == "application/vnd.docker.plugins.v1.2+json", case
        err = json.loads(text)["Err"]
        assert isinstance(err, str) and err.strip() and len(err) <= MAX_MESSAGE, f"{case}\n -> {text[:300]}"
        if method.startswith("IpamDriver."):
            assert json.loads(text)["Error"] == err, case
        after = await h.snapshot()
        assert before == after, f"{case}\n -> {resp.status} {err[:200]}\n changed: {_diff(before, after)}"
    await h.still_serving(case)


@FUZZ
@given(data=st.data())
def test_plugin_methods_reject_bad_bodies_cleanly(harness, data):
    method = data.draw(st.sampled_from(PLUGIN_METHODS), label="method")
    template = TEMPLATES.get(method, {"NetworkID": NETWORK, "EndpointID": EP})
    raw = data.draw(bodies(template), label="body")
    harness.run(_plugin_call(harness, method, raw))


# ---- REST API: schemathesis over openapi.json, and raw bodies -----------------------------------------------------

SCHEMA = schemathesis.openapi.from_path(OPENAPI)
ALL_OPERATIONS = [r.ok() for r in SCHEMA.get_all_operations()]
OPERATIONS = [op for op in ALL_OPERATIONS if op.path not in SKIPPED_PATHS]


def cases(operations: list[Any]) -> st.SearchStrategy[Any]:
    """Schemathesis's positive and negative cases for ``operations``."""
    return st.one_of([op.as_strategy(generation_mode=mode) for op in operations for mode in GenerationMode])


CASES = cases(OPERATIONS)
BODY_ROUTES = sorted((op.method.upper(), op.path) for op in OPERATIONS if op.definition.raw.get("requestBody"))


def _query(query: dict[str, Any] | None) -> list[tuple[str, str]]:
    """Schemathesis's query (values may be lists, numbers, None) as the wire's pairs."""
    pairs = []
    for key, value in (query or {}).items():
        for item in value if isinstance(value, list) else [value]:
            pairs.append((str(key), item if isinstance(item, str) else json.dumps(item)))
    return pairs


def _api_case(case: Any) -> tuple[str, URL, bytes | None, dict[str, str]]:
    """A schemathesis case as (method, URL, body, headers) on the wire."""
    url = URL("/v1" + case.formatted_path, encoded=True).with_query(_query(case.query))
    # Negative cases may carry raw bytes (a body of the wrong media type): sent as they are.
    raw = None if isinstance(case.body, NotSet) else case.body if isinstance(case.body, bytes) else _dump(case.body)
    headers = {str(k): str(v) for k, v in (case.headers or {}).items() if str(k).lower() != "content-length"}
    if raw is not None:
        headers.setdefault("Content-Type", case.media_type or "application/json")
    return case.method.upper(), url, raw, headers


async def _api_call(h: Harness, method: str, url: URL, raw: bytes | None, headers: dict[str, str]) -> None:
    case = _shown(f"{method} {url}", raw)
    before = await h.snapshot()
    resp = await h.api.request(method, url, data=raw, headers=headers)
    text = await resp.text()
    event(f"{method} {url.path.split('/')[2]} -> {resp.status}")
    assert resp.status < 500, f"{case}\n -> {resp.status} {text[:300]}"
    if resp.status >= 400:
        assert resp.content_type == "application/json", f"{case}\n -> {resp.status} {text[:300]}"
        body = json.loads(text)
        assert body["code"] == resp.status, case
        message = body["message"]
        assert isinstance(message, str) and message.strip() and len(message) <= MAX_MESSAGE, f"{case}\n -> {text[:300]}"
        after = await h.snapshot()
        assert before == after, f"{case}\n -> {resp.status} {message[:200]}\n changed: {_diff(before, after)}"
    await h.still_serving(case)


@FUZZ
@given(case=CASES)
def test_api_routes_from_openapi_schema(harness, case):
    """Schemathesis's positive and negative cases for every documented operation."""
    harness.run(_api_call(harness, *_api_case(case)))


@FUZZ
@given(data=st.data())
def test_api_routes_reject_bad_bodies_cleanly(harness, data):
    """What the schema cannot express: raw bytes, NaN, duplicate keys, deep and huge documents."""
    method, path = data.draw(st.sampled_from(BODY_ROUTES), label="route")
    path = path.replace("{id}", data.draw(st.sampled_from(["1001", "1002", "1", "0", "x"]), label="id"))
    path = path.replace("{ip}", data.draw(st.sampled_from(["10.2.0.99", "f00d::a02:0:0:99", "x"]), label="ip"))
    template = data.draw(st.sampled_from([{}, {"labels": ["k=v"]}, {"options": {"PolicyEnforcement": "default"}},
                                          {"frontend-address": {"ip": "10.96.0.1", "port": 80}},
                                          {"revision": 1, "cidrs": ["192.0.2.0/24"]}]), label="template")
    raw = data.draw(bodies(template), label="body")
    if path == "/policy" and data.draw(st.booleans(), label="as-array"):
        raw = b"[" + raw + b"]"
    harness.run(_api_call(harness, method, URL("/v1" + path), raw, {"Content-Type": "application/json"}))


# ---- size limits ------------------------------------------------------------------------------------------------

ANNOUNCED = 2 ** 30  # what the request claims to carry; far more than is ever sent


def oversized_request(address: int | str, method: str, path: str, send: int) -> bytes:
    """Announce ANNOUNCED bytes to ``address`` (a local TCP port or a unix
    socket's path), send ``send``, and return what the server answers; a
    server waiting for the whole body would time out here."""
    if isinstance(address, str):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(10)
        sock.connect(address)
    else:
        sock = socket.create_connection(("127.0.0.1", address), timeout=10)
    with sock:
        sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {ANNOUNCED}\r\n\r\n".encode())
        chunk = b"[" + b" " * (64 * 1024 - 1)
        sent = 0
        try:
            while sent < send:
                sock.sendall(chunk)
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before all of it was sent
        reply = b""
        while not _complete(reply) and (data := sock.recv(65536)):
            reply += data
        return reply


def _complete(reply: bytes) -> bool:
    """``reply`` holds the whole response: its head and Content-Length bytes of body."""
    head, sep, body = reply.partition(b"\r\n\r\n")
    length = [line.split(b":", 1)[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")]
    return bool(sep) and bool(length) and len(body) >= int(length[0])


def assert_413(reply: bytes, plugin: bool) -> None:
    """``reply`` is a 413 in the socket's error shape, saying the body is too large."""
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), reply[:300]
    text = json.loads(body.split(b"\n")[0] if plugin else body)
    message = text["Err"] if plugin else text["message"]
    assert "too large" in message or str(MAX_IMPORT_BYTES) in message, message


OVERSIZED = [
    ("POST", "/NetworkDriver.CreateEndpoint", 2 * 1024 * 1024),  # past aiohttp's 1 MiB client_max_size
    ("POST", "/IpamDriver.RequestAddress", 2 * 1024 * 1024),
    ("PATCH", "/v1/config", 2 * 1024 * 1024),
    ("PATCH", "/v1/endpoint/1001", 2 * 1024 * 1024),
    ("PUT", "/v1/service/7", 2 * 1024 * 1024),
    ("PUT", "/v1/policy", 0),  # MAX_IMPORT_BYTES is checked against Content-Length before any read
]


@pytest.mark.parametrize("method,path,send", OVERSIZED)
def test_oversized_body_is_413_before_it_is_read_whole(harness, method, path, send):
    client = harness.plugin if path.startswith("/NetworkDriver") or path.startswith("/IpamDriver") else harness.api
    before = harness.run(harness.snapshot())
    reply = harness.loop.run_until_complete(harness.loop.run_in_executor(
        None, oversized_request, client.port, method, path, send))
    assert_413(reply, plugin=client is harness.plugin)
    assert harness.run(harness.snapshot()) == before
    harness.run(harness.still_serving(f"{method} {path} with a 1 GiB Content-Length"))
