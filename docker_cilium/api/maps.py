"""/v1/map: every BPF map pinned under the agent's pin root, and one map's entries."""

from __future__ import annotations

import asyncio

from aiohttp import web

from docker_cilium import defaults
from docker_cilium.api.keys import DAEMON
from docker_cilium.datapath.maps.pinned import list_maps, read_map

routes = web.RouteTableDef()


def _pin_root(request: web.Request) -> str:
    return defaults.bpf_pin_root(request.app[DAEMON].config.bpf_root)


@routes.get("/v1/map")
async def get_maps(request: web.Request) -> web.Response:
    """``{"maps": [{name, path, type, key-size, value-size, max-entries, entries}]}``.

    Counting entries walks every key with bpf(2): off the event loop.
    """
    maps = await asyncio.to_thread(list_maps, _pin_root(request))
    return web.json_response({"maps": [m.to_dict() for m in maps]})


@routes.get("/v1/map/{name}")
async def get_map(request: web.Request) -> web.Response:
    """One map as in the list plus ``cache``: every entry, ``{"key": ..., "value": ...}`` decoded."""
    info, entries = await asyncio.to_thread(read_map, _pin_root(request), request.match_info["name"])
    return web.json_response({**info.to_dict(), "cache": entries})
