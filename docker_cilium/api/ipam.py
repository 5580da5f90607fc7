"""/v1/ipam: address allocation for non-Docker callers (Cilium's POST /ipam)."""

from __future__ import annotations

from aiohttp import web

from docker_cilium.api.keys import DAEMON

from docker_cilium.errors import BadRequest, NotFound

routes = web.RouteTableDef()


@routes.post("/v1/ipam")
async def allocate(request: web.Request) -> web.Response:
    daemon = request.app[DAEMON]
    family = request.query.get("family", "")
    owner = request.query.get("owner", "api")
    if family not in ("", "ipv4", "ipv6"):
        raise BadRequest(f"family must be ipv4 or ipv6, got {family!r}")
    ipam = daemon.ipam
    out: dict[str, str] = {}
    allocated: list[str] = []
    try:
        if family in ("", "ipv4") and ipam.enable_ipv4:
            ip = await ipam.allocate(ipam.request_pool(False), owner)
            out["ipv4"] = str(ip)
            allocated.append(str(ip))
        if family in ("", "ipv6") and ipam.enable_ipv6:
            ip = await ipam.allocate(ipam.request_pool(True), owner)
            out["ipv6"] = str(ip)
    except BaseException:
        for ip in allocated:  # all or nothing
            await ipam.release(ip)
        raise
    return web.json_response(
        {"address": out, "host-addressing": daemon.host_addressing()}, status=201
    )


@routes.post("/v1/ipam/{ip}")
async def allocate_ip(request: web.Request) -> web.Response:
    daemon = request.app[DAEMON]
    ip = request.match_info["ip"]
    owner = request.query.get("owner", "api")
    v6 = ":" in ip
    await daemon.ipam.allocate(daemon.ipam.request_pool(v6), owner, ip)
    return web.json_response({}, status=200)


@routes.delete("/v1/ipam/{ip}")
async def release(request: web.Request) -> web.Response:
    daemon = request.app[DAEMON]
    found = await daemon.ipam.release(request.match_info["ip"])
    if not found:
        raise NotFound(f"IP {request.match_info['ip']} is not allocated")
    return web.json_response({}, status=200)
