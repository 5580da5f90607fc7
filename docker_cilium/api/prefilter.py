"""/v1/prefilter: the XDP prefilter's deny list in Cilium's model.

GET answers ``Prefilter`` (``{spec: {revision, deny}, status: {realized}}``);
PATCH adds the CIDRs of a ``PrefilterSpec`` body, DELETE removes them (later
Cilium's verb); both answer the new ``Prefilter``. A body's revision other
than 0 must be the current one (409). Without ``--prefilter-device`` every
call is a 404 saying so (Cilium answers "Prefilter is not enabled in daemon").
"""

from __future__ import annotations

from aiohttp import web

from docker_cilium.api.errors import json_body
from docker_cilium.api.keys import DAEMON
from docker_cilium.errors import NotFound
from docker_cilium.prefilter import PreFilter, parse_spec

routes = web.RouteTableDef()


def _prefilter(request: web.Request) -> PreFilter:
    prefilter = request.app[DAEMON].prefilter
    if prefilter is None:
        raise NotFound("prefilter is not enabled in the agent: start cilium-agent with --prefilter-device DEV")
    return prefilter


@routes.get("/v1/prefilter")
async def get_prefilter(request: web.Request) -> web.Response:
    return web.json_response(_prefilter(request).model())


@routes.patch("/v1/prefilter")
async def patch_prefilter(request: web.Request) -> web.Response:
    prefilter = _prefilter(request)
    spec = parse_spec(await json_body(request))
    return web.json_response(await prefilter.insert(spec))


@routes.delete("/v1/prefilter")
async def delete_prefilter(request: web.Request) -> web.Response:
    prefilter = _prefilter(request)
    spec = parse_spec(await json_body(request))
    return web.json_response(await prefilter.delete(spec))
