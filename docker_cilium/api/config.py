"""/v1/healthz and /v1/config (PATCH changes the run-time options)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from docker_cilium.agent.options import ENABLED
from docker_cilium.api.keys import DAEMON, APIDaemon
from docker_cilium.api.errors import json_body, reject_unknown
from docker_cilium.errors import BadRequest
from docker_cilium.policy.resolve import parse_enforcement

routes = web.RouteTableDef()


@routes.get("/v1/healthz")
async def healthz(request: web.Request) -> web.Response:
    return web.json_response(await request.app[DAEMON].status())


#: Runtime option -> the DaemonConfig field of its start flag, shown with the live value.
CONFIG_FIELDS = {"PolicyEnforcement": "policy_enforcement", "Debug": "debug",
                 "MonitorAggregation": "monitor_aggregation"}


def config_model(daemon: APIDaemon) -> dict[str, Any]:
    configuration = daemon.config.to_dict()
    options = daemon.options.values()
    for name, value in options.items():
        key = CONFIG_FIELDS.get(name)
        if key is not None:  # the live value, not the start flag
            configuration[key] = value == ENABLED if isinstance(configuration[key], bool) else value
    return {
        "configuration": configuration,
        "policy-enforcement": daemon.policy.enforcement,
        "options": options,
        "option-descriptions": daemon.options.describe(),
        "addressing": daemon.host_addressing(),
        "mtu": daemon.mtu,
    }


@routes.get("/v1/config")
async def get_config(request: web.Request) -> web.Response:
    return web.json_response(config_model(request.app[DAEMON]))


@routes.patch("/v1/config")
async def patch_config(request: web.Request) -> web.Response:
    """Cilium's ``{"options": {"Key": "value"}}`` (the runtime options,
    agent/options.py), or ``{"policy-enforcement": "always"}``. All values are
    checked before any is applied; the changes are persisted."""
    daemon = request.app[DAEMON]
    body = await json_body(request)
    reject_unknown(body, {"policy-enforcement", "options"})
    options = body.get("options", {})
    if "policy-enforcement" in body:
        mode = parse_enforcement(body["policy-enforcement"], "policy-enforcement")
        if daemon.options.validate(options).get("PolicyEnforcement", mode) != mode:
            raise BadRequest("policy-enforcement and options.PolicyEnforcement disagree")
        options = {**options, "PolicyEnforcement": mode}
    await daemon.options.set(options)
    return web.json_response(config_model(daemon))
