"""The agent's REST API application (served on /var/run/cilium/cilium.sock)."""

from __future__ import annotations

from aiohttp import web

from docker_cilium.api import (config, debuginfo, endpoint, identity, ipam, maps, metrics, monitor, openapi, policy,
                                prefilter, service)
from docker_cilium.api.keys import DAEMON, APIDaemon
from docker_cilium.api.errors import error_middleware
from docker_cilium.errors import NotFound
from docker_cilium.metrics import AgentMetrics, agent_state


async def _not_found(request: web.Request) -> web.Response:
    raise NotFound(f"no such API path: {request.method} {request.path}")


def build_app(daemon: APIDaemon, agent_metrics: AgentMetrics | None = None) -> web.Application:
    """The REST app over ``daemon``; unknown paths are a 404 in the API's error shape.
    Calls are timed into ``agent_metrics`` (the agent's; a fresh registry if None)."""
    app = web.Application(middlewares=[metrics.metrics_middleware, error_middleware])
    app[DAEMON] = daemon
    app[metrics.METRICS] = agent_metrics if agent_metrics is not None else AgentMetrics()
    app[metrics.METRICS].set_state_source(lambda: agent_state(daemon))
    for module in (config, debuginfo, endpoint, identity, ipam, maps, metrics, monitor, policy, openapi, prefilter,
                   service):
        app.router.add_routes(module.routes)
    app.router.add_route("*", "/{tail:.*}", _not_found)
    return app
