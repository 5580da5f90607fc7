"""/v1/endpoint: the agent's view of its endpoints in Cilium's model."""

from __future__ import annotations

from aiohttp import web

from docker_cilium.api.errors import APIError
from docker_cilium.endpoint.manager import EndpointError

routes = web.RouteTableDef()


def _endpoint(request: web.Request):
    try:
        return request.app["daemon"].endpoints.lookup(request.match_info["id"])
    except EndpointError as exc:
        raise APIError(exc.status, str(exc)) from None


@routes.get("/v1/endpoint")
async def list_endpoints(request: web.Request) -> web.Response:
    return web.json_response([ep.to_model() for ep in request.app["daemon"].endpoints.list()])


@routes.get("/v1/endpoint/{id}")
async def get_endpoint(request: web.Request) -> web.Response:
    return web.json_response(_endpoint(request).to_model())
