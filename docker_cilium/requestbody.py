"""Request bodies as both sockets read them (the REST API and dockerd's plugin
calls): the raw bytes within the server's size limit, and JSON decoded within
``strictjson``'s bounds. Each socket words its own error reply around these.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from docker_cilium import strictjson
from docker_cilium.errors import BadRequest, PayloadTooLarge

__all__ = ["parse_json", "read_body"]


async def read_body(request: web.Request) -> bytes:
    """The raw body; one larger than the server's limit is a PayloadTooLarge."""
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise PayloadTooLarge(f"request body too large: {exc.text}") from None


def parse_json(raw: bytes) -> Any:
    """``raw`` decoded within ``strictjson``'s bounds (depth, UTF-8, finite numbers)."""
    try:
        return strictjson.loads(raw)
    except ValueError as exc:
        raise BadRequest(f"malformed JSON: {exc}") from None
