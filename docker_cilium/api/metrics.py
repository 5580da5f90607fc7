"""/v1/metrics/ (Cilium's metric list) and the middleware that times every API call.

The middleware is the outermost one: it sees the status the client got,
including errors the error middleware turned into JSON. Its ``path`` label
is the route's template (``/v1/endpoint/{id}``), so one series per route,
not one per endpoint ID a client asked for.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp import web

from docker_cilium.metrics import AgentMetrics

routes = web.RouteTableDef()

METRICS: web.AppKey[AgentMetrics] = web.AppKey("metrics")

#: A policy import is this call; one answered with an error is a failed import.
POLICY_IMPORT = ("PUT", "/v1/policy")


def route_path(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else request.path


@web.middleware
async def metrics_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    metrics = request.app[METRICS]
    t0 = time.perf_counter()
    status = 500  # unless a response comes back: an exception escaped every handler
    try:
        response = await handler(request)
        status = response.status
        return response
    except asyncio.CancelledError:
        status = 499  # the client went away (nginx's number for it; no HTTP status was sent)
        raise
    finally:
        path = route_path(request)
        metrics.api_call(path, request.method, status, time.perf_counter() - t0)
        if (request.method, path) == POLICY_IMPORT and status >= 400:
            metrics.policy_import_failed()


@routes.get("/v1/metrics/")
async def get_metrics(request: web.Request) -> web.Response:
    """Every series of the agent's registry as ``[{name, labels, value}]``."""
    return web.json_response(await request.app[METRICS].dump())
