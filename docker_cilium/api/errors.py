"""The REST API's one error reply, and JSON body decoding with precise messages
(the body reading both sockets share is ``docker_cilium.requestbody``).

Every ``docker_cilium.errors.APIError`` becomes ``{"code", "message"}`` with
the status its class carries; nothing here reads message text. Anything else
is a bug: answered 500 and logged, and the agent keeps serving.
"""

from __future__ import annotations

from typing import Any

import structlog
from aiohttp import web

from docker_cilium.errors import APIError, BadRequest
from docker_cilium.requestbody import parse_json, read_body

log = structlog.get_logger(__name__)


def error_response(status: int, message: str) -> web.Response:
    return web.json_response({"code": status, "message": message}, status=status)


async def json_body(request: web.Request, expect: type = dict) -> Any:
    raw = await read_body(request)
    if not raw.strip():
        raise BadRequest("request body is empty: expected JSON")
    body = parse_json(raw)
    if not isinstance(body, expect):
        kind = {dict: "an object", list: "an array"}.get(expect, expect.__name__)
        raise BadRequest(f"request body must be a JSON {kind}, got {type(body).__name__}")
    return body


def reject_unknown(body: dict[str, Any], allowed: set[str], where: str = "") -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise BadRequest(f"{where}unknown field {unknown[0][:80]!r} (allowed: {', '.join(sorted(allowed))})")


@web.middleware
async def error_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        return await handler(request)
    except APIError as exc:
        if exc.status >= 500:
            log.warning("api.error", path=request.path, status=exc.status, error=exc.message)
        return error_response(exc.status, exc.message)
    except web.HTTPException as exc:
        if exc.status >= 400:
            return error_response(exc.status, exc.reason)
        raise
    except Exception as exc:  # the agent keeps serving; the caller gets JSON
        log.exception("api.failure", path=request.path)
        return error_response(500, f"internal error: {exc}")
