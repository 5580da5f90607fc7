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

from docker_cilium.requestbody import parse_json, read_body
from docker_cilium.errors import APIError
from docker_cilium.plugin.ipam import IpamDriver
from docker_cilium.plugin.network import NetworkDriver
from docker_cilium.plugin.schemas import EMPTY_BODY, Empty, SchemaError, parse_request, request_type

log = structlog.get_logger(__name__)

CONTENT_TYPE = "application/vnd.docker.plugins.v1.2+json"
Handler = Callable[[Any], Awaitable[dict[str, Any]]]  # takes its method's request TypedDict


def _reply(body: dict[str, Any], status: int = 200) -> web.Response:
    return web.Response(status=status, body=(json.dumps(body) + "\n").encode(),
                        headers={"Content-Type": CONTENT_TYPE})


def _error(method: str, message: str, status: int) -> web.Response:
    body = {"Err": message}
    if method.startswith("IpamDriver."):
        body["Error"] = message
    return _reply(body, status)


def _failure(method: str, exc: Exception) -> web.Response:
    """A bug, not bad input: logged with its traceback, answered 500, and
    dockerd keeps being served."""
    log.error("plugin.failure", method=method, error=repr(exc), exc_info=exc)
    return _error(method, f"{method}: internal error: {exc}", 500)


async def _request(method: str, request: web.Request) -> Any:
    """The body of ``method`` as its typed request; an APIError says what is wrong."""
    raw = await read_body(request)
    if not raw.strip():
        if method in EMPTY_BODY:
            return Empty()
        raise SchemaError("request body is empty, expected a JSON object")
    body = parse_json(raw)
    kind = request_type(method)
    if kind is Empty:
        return Empty()
    typed, unknown = parse_request(kind, body)
    if unknown:
        log.debug("plugin.unknown_fields", method=method, fields=unknown)
    return typed


def build_app(network: NetworkDriver, ipam: IpamDriver) -> web.Application:
    routes: dict[str, Handler] = {}

    async def activate(_: Empty) -> dict[str, Any]:
        return {"Implements": ["NetworkDriver", "IpamDriver"]}

    routes["Plugin.Activate"] = activate
    routes.update(network.routes())
    routes.update(ipam.routes())

    async def dispatch(request: web.Request) -> web.Response:
        method = request.match_info["method"]
        handler = routes.get(method)
        if handler is None:
            return _error(method, f"{method} is not implemented by the cilium plugin", 404)
        t0 = time.perf_counter()
        try:
            req = await _request(method, request)
        except APIError as exc:  # the request itself: name the call it was for
            return _error(method, f"{method}: {exc.message}", exc.status)
        except Exception as exc:
            return _failure(method, exc)
        try:
            result = await handler(req)
        except APIError as exc:
            log.warning("plugin.error", method=method, status=exc.status, error=exc.message)
            return _error(method, exc.message, exc.status)
        except Exception as exc:
            return _failure(method, exc)
        log.debug("plugin.call", method=method, duration_ms=round((time.perf_counter() - t0) * 1000, 2))
        return _reply(result)

    app = web.Application()
    app.router.add_post("/{method}", dispatch)
    return app
