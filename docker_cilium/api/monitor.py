"""GET /v1/monitor: the monitor event stream as NDJSON (one JSON object a line).

Query: ``type`` (repeatable: drop, trace, policy-verdict, debug, capture,
agent), ``from``, ``to``, ``related-to`` (repeatable endpoint IDs). Filtering
happens here, before an event is queued for the client. The first line is a
``monitor-start`` record (Cilium's MonitorStatus: CPUs, pages) so a client
knows the stream is live before any event arrives.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from docker_cilium.api.keys import DAEMON
from docker_cilium.errors import BadRequest
from docker_cilium.monitor.events import TYPES_BY_NAME, now_rfc3339
from docker_cilium.monitor.hub import Filter, Item, Subscription

routes = web.RouteTableDef()

_CHECK_S = 1.0  # how soon a quiet stream notices its client left

_PARAMS = {"type", "from", "to", "related-to"}


def _ids(request: web.Request, name: str) -> frozenset[int]:
    out = set()
    for raw in request.query.getall(name, []):
        for part in raw.split(","):
            try:
                num = int(part)
            except ValueError:
                raise BadRequest(f"{name}: {part!r} is not an endpoint ID (an integer 0-65535)") from None
            if not 0 <= num <= 0xFFFF:
                raise BadRequest(f"{name}: {num} is not an endpoint ID (an integer 0-65535)")
            out.add(num)
    return frozenset(out)


def parse_filter(request: web.Request) -> Filter:
    unknown = sorted(set(request.query) - _PARAMS)
    if unknown:
        raise BadRequest(f"unknown monitor parameter(s): {', '.join(unknown)} "
                         f"(accepted: {', '.join(sorted(_PARAMS))})")
    types = set()
    for raw in request.query.getall("type", []):
        for name in raw.split(","):
            if name not in TYPES_BY_NAME:
                raise BadRequest(f"type: unknown event type {name!r}; use one of "
                                 f"{', '.join(sorted(TYPES_BY_NAME))}")
            types.add(name)
    return Filter(frozenset(types), _ids(request, "from"), _ids(request, "to"), _ids(request, "related-to"))


async def _write(resp: web.StreamResponse, sub: Subscription, data: bytes) -> bool:
    """Write ``data`` to the stream; False, with the write given up, if the
    subscription closed (the agent is stopping) and this client still did not
    read within the check interval: its write would otherwise wait on a full
    socket until the server's shutdown timeout."""
    write = asyncio.ensure_future(resp.write(data))
    closed = asyncio.ensure_future(sub.wait_closed())
    try:
        await asyncio.wait((write, closed), return_when=asyncio.FIRST_COMPLETED)
        if not write.done():  # closed: a client merely behind gets a moment to catch up
            await asyncio.wait((write,), timeout=_CHECK_S)
    finally:  # also when this handler is cancelled: no write outlives it
        closed.cancel()
        if not write.done():
            write.cancel()
    if write.cancelled():
        return False
    write.result()  # ConnectionResetError: the client left
    return True


@routes.get("/v1/monitor")
async def monitor(request: web.Request) -> web.StreamResponse:
    """Stream until the client goes away. A client that does not read only
    fills its own socket and its own queue (which then drops its oldest
    events); the writes below wait for this client alone."""
    flt = parse_filter(request)
    daemon = request.app[DAEMON]
    resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    with daemon.monitor.subscribe(flt) as sub:
        await resp.prepare(request)
        start = {"type": "monitor-start", "time": now_rfc3339(), **daemon.monitor_status()}
        await resp.write(Item(start).line)
        try:
            while True:
                try:
                    batch = await asyncio.wait_for(sub.get(), _CHECK_S)
                except asyncio.TimeoutError:  # nothing to send: is the client still there?
                    if request.transport is None or request.transport.is_closing():
                        break
                    continue
                if not batch:
                    break
                if not await _write(resp, sub, b"".join(item.line for item in batch)):
                    if request.transport is not None:
                        request.transport.abort()
                    break
        except ConnectionResetError:
            pass
    return resp
