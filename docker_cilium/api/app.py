"""The agent's REST API application (served on /var/run/cilium/cilium.sock)."""

from __future__ import annotations

from aiohttp import web

from docker_cilium.api import config, endpoint, identity, ipam, monitor, openapi, policy
from docker_cilium.api.keys import DAEMON, APIDaemon
from docker_cilium.api.errors import error_middleware
from docker_cilium.errors import NotFound


async def _not_found(request: web.Request) -> web.Response:
    raise NotFound(f"no such API path: {request.method} {request.path}")


def build_app(daemon: APIDaemon) -> web.Application:
    """The REST app over ``daemon``; unknown paths are a 404 in the API's error shape."""
    app = web.Application(middlewares=[error_middleware])
    app[DAEMON] = daemon
    for module in (config, endpoint, identity, ipam, monitor, policy, openapi):
        app.router.add_routes(module.routes)
    app.router.add_route("*", "/{tail:.*}", _not_found)
    return app
