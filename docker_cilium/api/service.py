"""/v1/service: load-balanced services in Cilium's model (GET list, GET/PUT/DELETE one)."""

from __future__ import annotations

from aiohttp import web

from docker_cilium.api.errors import json_body
from docker_cilium.api.keys import DAEMON
from docker_cilium.errors import NotFound
from docker_cilium.service.model import parse_id, parse_spec

routes = web.RouteTableDef()


@routes.get("/v1/service")
async def list_services(request: web.Request) -> web.Response:
    return web.json_response([s.model() for s in request.app[DAEMON].services.services()])


@routes.get("/v1/service/{id}")
async def get_service(request: web.Request) -> web.Response:
    svc_id = parse_id(request.match_info["id"])
    svc = request.app[DAEMON].services.get(svc_id)
    if svc is None:
        raise NotFound(f"service {svc_id} not found")
    return web.json_response(svc.model())


@routes.put("/v1/service/{id}")
async def put_service(request: web.Request) -> web.Response:
    """Create (201) or update (200) the service; its spec is Cilium's ServiceSpec. ID 0: the
    frontend's own ID, or a new one (the reply's ``spec.id``)."""
    svc_id = parse_id(request.match_info["id"], allocate=True)
    svc = parse_spec(await json_body(request), svc_id)
    stored, created = await request.app[DAEMON].services.put(svc)
    return web.json_response(stored.model(), status=201 if created else 200)


@routes.delete("/v1/service/{id}")
async def delete_service(request: web.Request) -> web.Response:
    svc_id = parse_id(request.match_info["id"])
    if not await request.app[DAEMON].services.delete(svc_id):
        raise NotFound(f"service {svc_id} not found")
    return web.json_response({}, status=200)
