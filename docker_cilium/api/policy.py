"""/v1/policy and /v1/policy/resolve: the policy repository over REST.

Cilium returns the rules as a *string* of pretty JSON (``{"revision", "policy"}``),
so ``cilium policy get`` can print exactly what the user imported; kept here
(the reply to an import carries the same rules as compact JSON).
All mutations go through the daemon's policy manager (``daemon.policy``), which
validates everything before changing anything.
"""

from __future__ import annotations

import json
from typing import Any, Sequence

from aiohttp import web

from docker_cilium.api.keys import DAEMON

from docker_cilium.api.errors import json_body, read_body, reject_unknown
from docker_cilium.errors import BadRequest, NotFound, PayloadTooLarge
from docker_cilium.policy.api.rule import Rule
from docker_cilium.policy.manager import MAX_IMPORT_BYTES, PolicyManager

routes = web.RouteTableDef()

TRACE_PROTOCOLS = ("TCP", "UDP", "ANY", "ICMP")


def _policy(request: web.Request) -> PolicyManager:
    return request.app[DAEMON].policy


async def _reply(policy: PolicyManager, rules: Sequence[Rule]) -> web.Response:
    return web.json_response({"revision": policy.revision, "policy": await policy.rules_json(rules)})


def _query_list(request: web.Request, name: str) -> list[str]:
    """``?labels=a,b`` and/or repeated ``?labels=a&labels=b``."""
    return [part.strip() for value in request.query.getall(name, []) for part in value.split(",") if part.strip()]


def _string_list(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BadRequest(f"{where} must be a JSON array of strings, got {json.dumps(value)[:80]}")
    return [v.strip() for v in value if v.strip()]


async def _optional_body(request: web.Request) -> Any:
    """Decoded JSON body, or None when the request has none (GET/DELETE may omit it)."""
    if not (await read_body(request)).strip():
        return None
    return await json_body(request, object)


def _some(items: list[str], shown: int = 10) -> str:
    """The first ``shown`` of ``items`` and how many more: a message names
    what did not match without echoing a megabyte of request back."""
    more = f" (and {len(items) - shown} more)" if len(items) > shown else ""
    return ", ".join(items[:shown]) + more


def _flag(request: web.Request, name: str) -> bool:
    raw = request.query.get(name, "false").lower()
    if raw not in ("true", "false", "1", "0", ""):
        raise BadRequest(f"query parameter {name} must be true or false, got {raw!r}")
    return raw in ("true", "1")


@routes.get("/v1/policy")
async def get_policy(request: web.Request) -> web.Response:
    labels = _query_list(request, "labels")
    body = await _optional_body(request)
    if body is not None:  # Cilium's client sends the labels as a JSON array body
        labels += _string_list(body, "request body")
    policy = _policy(request)
    rules = policy.repo.get(labels or None)
    if labels and not rules:
        raise NotFound(f"no policy rules found with labels {_some(labels)}")
    return await _reply(policy, rules)


async def read_policy_body(request: web.Request) -> bytes:
    """A policy document, up to MAX_IMPORT_BYTES (above the API's general body
    limit: 10,000 rules are a few MB); larger is a 413 naming the limit."""
    too_large = PayloadTooLarge(f"policy document is larger than {MAX_IMPORT_BYTES} bytes, the most one "
                                f"import may carry (MAX_IMPORT_BYTES): split it into several imports")
    if request.content_length is not None and request.content_length > MAX_IMPORT_BYTES:
        raise too_large
    chunks, size = [], 0
    while chunk := await request.content.readany():
        size += len(chunk)
        if size > MAX_IMPORT_BYTES:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


@routes.put("/v1/policy")
async def put_policy(request: web.Request) -> web.Response:
    raw = await read_policy_body(request)
    if not raw.strip():
        raise BadRequest("request body is empty: expected a JSON array of policy rules")
    policy = _policy(request)
    _, rules = await policy.import_rules(raw)
    # The rules imported, as Cilium's PutPolicy replies, in their compact
    # persisted JSON (each rule as sent, made once during the import):
    # indenting 100,000 rules would cost seconds for a string clients only
    # decode (`cilium policy import` prints the revision). GET stays indented.
    return web.json_response({"revision": policy.revision, "policy": "[" + ",".join(r.compact_json for r in rules) + "]"})


@routes.delete("/v1/policy")
async def delete_policy(request: web.Request) -> web.Response:
    all_ = _flag(request, "all")
    body = await _optional_body(request)
    labels = _string_list(body, "request body") if body is not None else []
    labels += _query_list(request, "labels")
    if not labels and not all_:
        raise BadRequest("refusing to delete policy rules without labels: "
                         "send a JSON array of labels, or ?all=true to delete every rule")
    policy = _policy(request)
    await policy.delete_rules(labels, all_ and not labels)
    return await _reply(policy, policy.repo.rules)


def parse_dport(text: str) -> tuple[int, str]:
    """``"80/TCP"`` -> (80, "TCP"); a bare port means TCP (the common question)."""
    port_s, _, proto = str(text).strip().partition("/")
    proto = (proto or "TCP").upper()
    if proto not in TRACE_PROTOCOLS:
        raise BadRequest(f"dports: invalid protocol in {text!r}: must be one of {', '.join(TRACE_PROTOCOLS)}")
    if not (port_s.isascii() and port_s.isdigit()) or len(port_s) > 5:  # int() also reads '٨٠' as 80
        raise BadRequest(f"dports: invalid port in {text[:80]!r}: expected PORT[/PROTOCOL], e.g. 80/TCP")
    port = int(port_s)
    if not 1 <= port <= 65535:
        raise BadRequest(f"dports: port {port} is out of range 1-65535")
    return port, proto


def _selector_labels(value: Any, where: str) -> list[str]:
    # Cilium's TraceSelector nests them: {"from": {"labels": [...]}}; accept both.
    if isinstance(value, dict):
        reject_unknown(value, {"labels", "dports"}, f"{where}: ")
        value = value.get("labels", [])
    return _string_list(value, where)


@routes.get("/v1/policy/resolve")
async def resolve_policy(request: web.Request) -> web.Response:
    body = await _optional_body(request)
    if body is None:
        allowed_q = {"from", "to", "dports"}
        unknown = sorted(set(request.query) - allowed_q)
        if unknown:
            raise BadRequest(f"unknown query parameter {unknown[0]!r} (allowed: {', '.join(sorted(allowed_q))})")
        src, dst, dports = (_query_list(request, k) for k in ("from", "to", "dports"))
    else:
        if not isinstance(body, dict):
            raise BadRequest(f"request body must be a JSON object, got {type(body).__name__}")
        reject_unknown(body, {"from", "to", "dports", "verbose"})
        src = _selector_labels(body.get("from", []), "from")
        dst = _selector_labels(body.get("to", []), "to")
        to = body.get("to")
        dports = _string_list(body.get("dports", []), "dports")
        if isinstance(to, dict) and "dports" in to:  # Cilium: to.dports [{port, protocol}]
            for p in to["dports"] if isinstance(to["dports"], list) else [None]:
                if not isinstance(p, dict) or not isinstance(p.get("port"), (int, str)):
                    raise BadRequest("to.dports must be a list of {port, protocol} objects")
                dports.append(f"{p['port']}/{p.get('protocol') or 'TCP'}")
    if not src or not dst:
        raise BadRequest("both 'from' and 'to' need at least one label")
    policy = _policy(request)
    checks: list[tuple[int | None, str]] = [parse_dport(d) for d in dports] or [(None, "ANY")]
    verdicts, log = [], []
    for port, proto in checks:
        verdict, lines = policy.trace(src, dst, port, proto)
        verdicts.append(verdict)
        log += lines
    allowed = all(v == "ALLOWED" for v in verdicts)
    return web.json_response({"verdict": "allowed" if allowed else "denied", "log": "\n".join(log)})
