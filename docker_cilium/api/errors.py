"""One error shape for the whole REST API, and JSON body decoding with precise messages."""

from __future__ import annotations

import json
from typing import Any

import structlog
from aiohttp import web

log = structlog.get_logger(__name__)


class APIError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def error_response(status: int, message: str) -> web.Response:
    return web.json_response({"code": status, "message": message}, status=status)


async def json_body(request: web.Request, expect: type = dict) -> Any:
    raw = await request.read()
    if not raw.strip():
        raise APIError(400, "request body is empty: expected JSON")
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise APIError(400, f"malformed JSON: {exc}") from None
    if not isinstance(body, expect):
        kind = {dict: "an object", list: "an array"}.get(expect, expect.__name__)
        raise APIError(400, f"request body must be a JSON {kind}, got {type(body).__name__}")
    return body


def reject_unknown(body: dict[str, Any], allowed: set[str], where: str = "") -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise APIError(400, f"{where}unknown field {unknown[0]!r} (allowed: {', '.join(sorted(allowed))})")


@web.middleware
async def error_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        return await handler(request)
    except APIError as exc:
        return error_response(exc.status, exc.message)
    except web.HTTPException as exc:
        if exc.status >= 400:
            return error_response(exc.status, exc.reason)
        raise
    except Exception as exc:  # the agent keeps serving; the caller gets JSON
        log.exception("api.failure", path=request.path)
        return error_response(500, f"internal error: {exc}")
