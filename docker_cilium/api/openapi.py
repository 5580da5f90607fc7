"""/v1/openapi.json: the API's own description, shipped as package data.

JSON rather than YAML so neither the agent nor its tests need PyYAML (a JSON
document is also valid YAML for tools that want that).
"""

from __future__ import annotations

from importlib import resources

from aiohttp import web

routes = web.RouteTableDef()

DOCUMENT = "openapi.json"


def load_document() -> bytes:
    return resources.files("docker_cilium.api").joinpath(DOCUMENT).read_bytes()


@routes.get("/v1/openapi.json")
async def openapi(request: web.Request) -> web.Response:
    return web.Response(body=load_document(), content_type="application/json")
