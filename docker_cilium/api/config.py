"""/v1/healthz and /v1/config (PATCH changes the run-time options)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from docker_cilium.api.keys import DAEMON, APIDaemon

from docker_cilium.policy.resolve import parse_enforcement
from docker_cilium.api.errors import json_body, reject_unknown
from docker_cilium.errors import BadRequest

routes = web.RouteTableDef()

# Run-time options `cilium config Key=Value` may change (Cilium's names).
MUTABLE_OPTIONS = ("PolicyEnforcement",)


@routes.get("/v1/healthz")
async def healthz(request: web.Request) -> web.Response:
    return web.json_response(await request.app[DAEMON].status())


def _config_model(daemon: APIDaemon) -> dict[str, Any]:
    configuration = daemon.config.to_dict()
    mode = daemon.policy.enforcement
    configuration["policy_enforcement"] = mode  # the live value, not the start flag
    return {
        "configuration": configuration,
        "policy-enforcement": mode,
        "options": {"PolicyEnforcement": mode},
        "addressing": daemon.host_addressing(),
        "mtu": daemon.mtu,
    }


@routes.get("/v1/config")
async def get_config(request: web.Request) -> web.Response:
    return web.json_response(_config_model(request.app[DAEMON]))


@routes.patch("/v1/config")
async def patch_config(request: web.Request) -> web.Response:
    """``{"policy-enforcement": "always"}`` or Cilium's ``{"options": {"PolicyEnforcement": "always"}}``."""
    daemon = request.app[DAEMON]
    body = await json_body(request)
    reject_unknown(body, {"policy-enforcement", "options"})
    options = body.get("options", {})
    if not isinstance(options, dict):
        raise BadRequest("options must be a JSON object of Key: Value")
    for key in options:
        if key not in MUTABLE_OPTIONS:
            raise BadRequest(f"unknown or read-only option {key!r} (changeable: {', '.join(MUTABLE_OPTIONS)})")
    wanted = [(k, v) for k, v in (("policy-enforcement", body.get("policy-enforcement")),
                                  ("PolicyEnforcement", options.get("PolicyEnforcement"))) if v is not None]
    modes = {parse_enforcement(value, key) for key, value in wanted}
    if len(modes) > 1:
        raise BadRequest("policy-enforcement and options.PolicyEnforcement disagree")
    if modes:
        await daemon.policy.set_enforcement(modes.pop())
    return web.json_response(_config_model(daemon))
