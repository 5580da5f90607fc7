"""/v1/endpoint: the agent's view of its endpoints in Cilium's model."""

from __future__ import annotations

from aiohttp import web

from docker_cilium.api.keys import DAEMON

from docker_cilium.policy.resolve import parse_enforcement
from docker_cilium.api.errors import json_body, reject_unknown
from docker_cilium.errors import BadRequest

routes = web.RouteTableDef()


def _endpoint(request: web.Request):
    return request.app[DAEMON].endpoints.lookup(request.match_info["id"])


@routes.get("/v1/endpoint")
async def list_endpoints(request: web.Request) -> web.Response:
    return web.json_response([ep.to_model() for ep in request.app[DAEMON].endpoints.list()])


@routes.get("/v1/endpoint/{id}")
async def get_endpoint(request: web.Request) -> web.Response:
    return web.json_response(_endpoint(request).to_model())


# --- labels and per-endpoint configuration -----------------------------------



def _labels_model(ep) -> dict[str, list[str]]:
    """The endpoint model's label groups: from the container, added, removed, and
    the effective set its identity is made of."""
    return dict(ep.to_model()["labels"])


def _config_model(ep) -> dict[str, str]:
    return {"PolicyEnforcement": ep.to_model().get("policy-enforcement", "default")}


def _string_list(body: dict, key: str) -> list[str]:
    value = body.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BadRequest(f"{key} must be a JSON array of label strings")
    return [v.strip() for v in value if v.strip()]


async def _apply_labels(request: web.Request, ep, add: list[str], delete: list[str]) -> None:
    await request.app[DAEMON].endpoints.update_labels(ep, add, delete)


async def _apply_config(request: web.Request, ep, changes: dict[str, str]) -> None:
    if not changes:
        return
    await request.app[DAEMON].endpoints.update_options(ep, changes)


@routes.delete("/v1/endpoint/{id}")
async def delete_endpoint(request: web.Request) -> web.Response:
    """`cilium endpoint disconnect`: the endpoint leaves the network (see
    EndpointManager.disconnect); the reply is its last model (disconnected)."""
    ep = _endpoint(request)
    await request.app[DAEMON].endpoints.disconnect(ep)
    return web.json_response(ep.to_model())


@routes.get("/v1/endpoint/{id}/log")
async def get_endpoint_log(request: web.Request) -> web.Response:
    """Its status log: state transitions and regenerations with their reasons."""
    return web.json_response(_endpoint(request).status_model())


@routes.patch("/v1/endpoint/{id}")
async def patch_endpoint(request: web.Request) -> web.Response:
    """A subset of Cilium's EndpointChangeRequest: ``labels`` (the full new
    list) and ``policy-enforcement``. Everything is validated first."""
    ep = _endpoint(request)
    body = await json_body(request)
    reject_unknown(body, {"labels", "policy-enforcement"})
    changes = {}
    if "policy-enforcement" in body:  # checked before any label changes
        changes = {"PolicyEnforcement": parse_enforcement(body["policy-enforcement"], "policy-enforcement")}
    if "labels" in body:
        wanted = _string_list(body, "labels")
        current = _labels_model(ep)["effective"]
        add = [lbl for lbl in wanted if lbl not in current]
        delete = [lbl for lbl in current if lbl not in wanted]
        if add or delete:
            await _apply_labels(request, ep, add, delete)
    await _apply_config(request, ep, changes)
    return web.json_response(ep.to_model())


@routes.get("/v1/endpoint/{id}/labels")
async def get_endpoint_labels(request: web.Request) -> web.Response:
    return web.json_response(_labels_model(_endpoint(request)))


@routes.patch("/v1/endpoint/{id}/labels")
async def patch_endpoint_labels(request: web.Request) -> web.Response:
    ep = _endpoint(request)
    body = await json_body(request)
    reject_unknown(body, {"add", "delete"})
    add, delete = _string_list(body, "add"), _string_list(body, "delete")
    both = sorted(set(add) & set(delete))
    if both:
        raise BadRequest(f"label {both[0]!r} is both added and deleted")
    if add or delete:
        await _apply_labels(request, ep, add, delete)
    return web.json_response(_labels_model(ep))


@routes.get("/v1/endpoint/{id}/config")
async def get_endpoint_config(request: web.Request) -> web.Response:
    return web.json_response(_config_model(_endpoint(request)))


@routes.patch("/v1/endpoint/{id}/config")
async def patch_endpoint_config(request: web.Request) -> web.Response:
    ep = _endpoint(request)
    body = await json_body(request)
    if "options" in body:  # Cilium's EndpointConfigurationSpec: {"options": {...}}
        reject_unknown(body, {"options"})
        body = body["options"]
        if not isinstance(body, dict):
            raise BadRequest("options must be a JSON object of Key: Value")
    # As Cilium's: every accepted PATCH regenerates the endpoint, an empty one
    # too (that is `cilium endpoint regenerate`).
    await request.app[DAEMON].endpoints.update_options(ep, body)
    return web.json_response(_config_model(ep))
