"""/v1/debuginfo (`cilium debuginfo`) and /v1/cluster/nodes (`cilium node list`)."""

from __future__ import annotations

from aiohttp import web

from docker_cilium.agent.debuginfo import collect
from docker_cilium.api.config import config_model
from docker_cilium.api.keys import DAEMON

routes = web.RouteTableDef()


@routes.get("/v1/debuginfo")
async def debuginfo(request: web.Request) -> web.Response:
    daemon = request.app[DAEMON]
    return web.json_response(await collect(daemon, lambda: config_model(daemon)))


@routes.get("/v1/cluster/nodes")
async def cluster_nodes(request: web.Request) -> web.Response:
    """Cilium's ClusterNodeStatus (``self``, ``nodes-added``)."""
    return web.json_response(request.app[DAEMON].nodes())
