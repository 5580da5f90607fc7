"""Every status a REST route answers with is listed under that route in openapi.json.

Two ways to find the statuses, neither a hand-written list: the error classes
a route's handler raises (read from its source and the docker_cilium
functions it calls by name, each class carrying its status), and probing
the real app (tests/unit/unit_daemon.py: the agent's own objects on a
SQLite store) with bad paths, bodies and queries, an oversized body, and the
KV store closed underneath it. What the domain raises only on states a probe
cannot reach cheaply (an exhausted /16 pool: 502) stays documented by hand.
"""

from __future__ import annotations

import ast
import inspect
import json
import textwrap
from typing import Any, Callable

from aiohttp import web
from aiohttp.test_utils import TestClient

from docker_cilium.api.app import build_app
from docker_cilium.api.openapi import load_document
from docker_cilium.errors import APIError

DOC = json.loads(load_document())
BASE = DOC["servers"][0]["url"]
# /v1/healthz is the real Daemon.status, which the unit daemon does not have
# (checked on a real agent: tests/e2e/test_etcd_agent.py).
NOT_PROBED = {("GET", "/v1/healthz")}


def documented(method: str, path: str) -> set[int]:
    op = DOC["paths"][path[len(BASE):]][method.lower()]
    return {int(code) for code in op["responses"]}


def served_routes(app: web.Application) -> list[tuple[str, str, Callable[..., Any]]]:
    out = []
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource else {}
        path = info.get("path") or info.get("formatter") or ""
        if route.method in ("HEAD", "*") or not path.startswith(BASE + "/"):
            continue
        out.append((route.method, path, route.handler))
    return out


def raised_statuses(fn: Callable[..., Any], seen: set[Callable[..., Any]] | None = None) -> set[int]:
    """Statuses of the APIError classes ``fn`` raises, following the
    docker_cilium functions it calls by bare name (helpers, body parsing)."""
    seen = set() if seen is None else seen
    seen.add(fn)
    names = fn.__globals__
    out: set[int] = set()
    for node in ast.walk(ast.parse(textwrap.dedent(inspect.getsource(fn)))):
        if isinstance(node, ast.Raise) and node.exc is not None:
            target = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
            cls = names.get(target.id) if isinstance(target, ast.Name) else None
            if isinstance(cls, type) and issubclass(cls, APIError):
                out.add(cls.status)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            callee = names.get(node.func.id)
            if (inspect.isfunction(callee) and callee.__module__.startswith("docker_cilium.")
                    and callee not in seen):
                out |= raised_statuses(callee, seen)
    return out


def test_statuses_raised_by_each_handler_are_documented():
    app = build_app(None)  # type: ignore[arg-type]  # routes only: no handler runs
    missing = {}
    for method, path, handler in served_routes(app):
        undocumented = raised_statuses(handler) - documented(method, path)
        if undocumented:
            missing[f"{method} {path}"] = sorted(undocumented)
    assert missing == {}, f"raised but not in openapi.json: {missing}"


def test_raised_statuses_finds_body_parsing_errors():
    """The reader above is what the test leans on: it must see through helpers."""
    from docker_cilium.api import config

    assert raised_statuses(config.patch_config) == {400, 413}


# --- probing the real app ---------------------------------------------------------------

PATH_VALUES = {
    "id": ["1001", "99999", "cilium-local:x", "container-name:app2", "abc"],
    "ip": ["10.2.0.50", "10.2.0.2", "192.0.2.77", "f00d::a02:0:0:77", "nonsense", "10.2.0.99"],
    "name": ["cilium_lxc", ".."],
}
BODIES: list[bytes | None] = [None, b"", b"{", b"[]", b"{}", b'{"bogus": 1}', b'"text"', b" " * (2 * 1024 * 1024)]
QUERIES = ["", "?family=ipv9&owner=t", "?family=ipv6", "?labels=%3A%3A", "?from=id=app1&to=id=app2&dports=80",
           "?from=id=app1&to=id=app2&dports=99999", "?bogus=1", "?labels=name%3Dweb"]
# Bodies a route accepts, so that with the store closed it reaches the store.
VALID = {
    ("PATCH", "/v1/config"): {"policy-enforcement": "always"},
    ("PATCH", "/v1/endpoint/{id}"): {"labels": ["container:id=app1", "user:probe=1"]},
    ("PATCH", "/v1/endpoint/{id}/labels"): {"add": ["user:probe=2"]},
    ("PATCH", "/v1/endpoint/{id}/config"): {"PolicyEnforcement": "always"},
    ("PUT", "/v1/policy"): [{"endpointSelector": {"matchLabels": {"id": "app1"}}, "labels": ["probe=1"]}],
    ("DELETE", "/v1/policy"): {"labels": ["probe=1"]},
    ("GET", "/v1/policy/resolve"): {"from": ["id=app1"], "to": ["id=app2"], "dports": ["80/TCP"]},
    ("PATCH", "/v1/prefilter"): {"revision": 0, "deny": ["192.0.2.0/24"]},
    ("DELETE", "/v1/prefilter"): {"revision": 7, "deny": ["192.0.2.0/24"]},
    ("PUT", "/v1/service/{id}"): {"frontend-address": {"ip": "10.96.0.10", "port": 80},
                                  "backend-addresses": [{"ip": "10.2.0.2", "port": 8080}]},
}


def concrete_paths(path: str) -> list[str]:
    paths = [path]
    for name, values in PATH_VALUES.items():
        paths = [p.replace("{" + name + "}", v) for p in paths for v in values] if "{" + name + "}" in path else paths
    return paths


async def _probe(client: TestClient, method: str, path: str, seen: dict[str, set[int]]) -> None:
    valid = VALID.get((method, path))
    bodies = BODIES + ([json.dumps(valid).encode()] if valid is not None else [])
    for concrete in concrete_paths(path):
        requests = [(query, None) for query in QUERIES] + [("", body) for body in bodies]
        for query, body in requests:
            resp = await client.request(method, concrete + query, data=body)
            if resp.content_type == "application/x-ndjson":
                resp.close()  # a stream (GET /v1/monitor) never ends: its status is what is probed
            else:
                await resp.read()
            seen.setdefault(f"{method} {path}", set()).add(resp.status)


async def test_probed_statuses_are_documented(api):
    client, daemon = api
    seen: dict[str, set[int]] = {}
    routes = [(m, p) for m, p, _ in served_routes(client.app) if (m, p) not in NOT_PROBED]
    for method, path in routes:
        await _probe(client, method, path, seen)
    await daemon.store.close()  # the KV store goes away under a serving agent
    for method, path in routes:
        await _probe(client, method, path, seen)
    missing = {route: sorted(codes - documented(*route.split(" ", 1))) for route, codes in seen.items()}
    assert {r: c for r, c in missing.items() if c} == {}, f"answered but not in openapi.json: {missing}"
    # The probes reach what they are meant to: each kind of failure shows up somewhere.
    reached = set().union(*seen.values())
    assert {400, 404, 409, 413, 503} <= reached, sorted(reached)


def test_every_ref_resolves():
    refs: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            refs.extend(v for k, v in node.items() if k == "$ref")
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(DOC)
    assert any("/responses/" in r for r in refs)
    for ref in refs:
        node: Any = DOC
        for part in ref.removeprefix("#/").split("/"):
            assert isinstance(node, dict) and part in node, f"unresolved $ref {ref}"
            node = node[part]
