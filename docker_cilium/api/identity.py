"""/v1/identity: security identities (reserved + allocated) and their labels."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from docker_cilium.api.keys import DAEMON

from docker_cilium.errors import BadRequest, NotFound
from docker_cilium.identity.allocator import Identity
from docker_cilium.identity.labels import Label

routes = web.RouteTableDef()


def identity_model(ident: Identity) -> dict[str, Any]:
    return {"id": ident.id, "labels": ident.labels.to_strings()}


@routes.get("/v1/identity")
async def list_identities(request: web.Request) -> web.Response:
    """All identities, or those whose labels include every ``?labels=`` label
    (a label without a source matches any source, as in selectors)."""
    raw = [p.strip() for v in request.query.getall("labels", []) for p in v.split(",") if p.strip()]
    try:
        selector = [Label.parse_selector(s) for s in raw]
    except ValueError as exc:
        raise BadRequest(f"labels: {exc}") from None
    idents = sorted(request.app[DAEMON].identities.identities(), key=lambda i: i.id)
    if selector:
        idents = [i for i in idents if i.labels.matches(selector)]
    return web.json_response([identity_model(i) for i in idents])


@routes.get("/v1/identity/{id}")
async def get_identity(request: web.Request) -> web.Response:
    raw = request.match_info["id"]
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 10:  # int() also reads '٣' as 3
        raise BadRequest(f"invalid identity {raw[:80]!r}: expected a number (0-4294967295)")
    num = int(raw)
    ident = request.app[DAEMON].identities.identity(num)
    if ident is None:
        raise NotFound(f"identity {num} not found")
    return web.json_response(identity_model(ident))
