"""/v1/healthz and /v1/config."""

from __future__ import annotations

from aiohttp import web

routes = web.RouteTableDef()


@routes.get("/v1/healthz")
async def healthz(request: web.Request) -> web.Response:
    return web.json_response(await request.app["daemon"].status())


@routes.get("/v1/config")
async def get_config(request: web.Request) -> web.Response:
    daemon = request.app["daemon"]
    return web.json_response({
        "configuration": daemon.config.to_dict(),
        "addressing": daemon.host_addressing(),
        "mtu": daemon.mtu,
    })
