"""The aiohttp application dockerd talks to on /run/docker/plugins/cilium.sock.

Every call is ``POST /<Interface>.<Method>``. Decoding, schema checks and
error mapping happen here, once, so the drivers only see valid requests and
only raise domain errors. Replies carry Docker's plugin media type and end in
a newline like Go's encoder; errors are non-200 with ``{"Err": ...}`` (and
``"Error"`` too on IPAM routes, the key IPAM replies use).
"""

from __future__ import annotations

import json
import time
from typing import Any, Awaitable, Callable

import structlog
from aiohttp import web

from docker_cilium.endpoint.manager import EndpointError
from docker_cilium.ipam.allocator import IPAMError
from docker_cilium.plugin.ipam import IpamDriver
from docker_cilium.plugin.network import NetworkDriver
from docker_cilium.plugin.schemas import EMPTY_BODY, IPAM_SCHEMAS, NETWORK_SCHEMAS, SchemaError, validate

log = structlog.get_logger(__name__)

CONTENT_TYPE = "application/vnd.docker.plugins.v1.2+json"
Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


def _reply(body: dict[str, Any], status: int = 200) -> web.Response:
    return web.Response(status=status, body=(json.dumps(body) + "\n").encode(),
                        headers={"Content-Type": CONTENT_TYPE})


def _error(method: str, message: str, status: int) -> web.Response:
    body = {"Err": message}
    if method.startswith("IpamDriver."):
        body["Error"] = message
    return _reply(body, status)


def _schema_for(method: str) -> dict | None:
    iface, _, name = method.partition(".")
    if iface == "NetworkDriver":
        return NETWORK_SCHEMAS.get(name)
    if iface == "IpamDriver":
        return IPAM_SCHEMAS.get(name)
    return None


def build_app(network: NetworkDriver, ipam: IpamDriver) -> web.Application:
    routes: dict[str, Handler] = {}

    async def activate(_: dict[str, Any]) -> dict[str, Any]:
        return {"Implements": ["NetworkDriver", "IpamDriver"]}

    routes["Plugin.Activate"] = activate
    routes.update(network.routes())
    routes.update(ipam.routes())

    async def dispatch(request: web.Request) -> web.Response:
        method = request.match_info["method"]
        handler = routes.get(method)
        if handler is None:
            return _error(method, f"{method} is not implemented by the cilium plugin", 404)
        raw = await request.read()
        body: Any = {}
        if method not in EMPTY_BODY or raw.strip():
            if not raw.strip():
                return _error(method, f"{method}: request body is empty, expected a JSON object", 400)
            try:
                body = json.loads(raw)
            except ValueError as exc:
                return _error(method, f"{method}: malformed JSON: {exc}", 400)
            schema = _schema_for(method)
            if schema is not None:
                try:
                    unknown = validate(schema, body)
                except SchemaError as exc:
                    return _error(method, f"{method}: {exc}", 400)
                if unknown:
                    log.debug("plugin.unknown_fields", method=method, fields=unknown)
        t0 = time.perf_counter()
        try:
            result = await handler(body)
        except SchemaError as exc:
            return _error(method, f"{method}: {exc}", 400)
        except (EndpointError, IPAMError) as exc:
            status = getattr(exc, "status", 400)
            log.warning("plugin.error", method=method, error=str(exc))
            return _error(method, str(exc), status)
        except Exception as exc:  # keep serving dockerd whatever happens
            log.exception("plugin.failure", method=method)
            return _error(method, f"{method}: internal error: {exc}", 500)
        log.debug("plugin.call", method=method, duration_ms=round((time.perf_counter() - t0) * 1000, 2))
        return _reply(result)

    app = web.Application()
    app.router.add_post("/{method}", dispatch)
    return app
