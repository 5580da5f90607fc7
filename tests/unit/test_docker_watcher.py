"""The Docker event watcher tells the agent when Docker may have re-ordered its NAT rules.

A stand-in dockerd on a unix socket streams events; the real watcher follows
them. The real-dockerd path is tests/e2e/test_bridge_identity.py.
"""

from __future__ import annotations

import asyncio
import json

from aiohttp import web

from docker_cilium.workloads.docker import DockerWatcher


async def test_network_create_and_reconnect_notify(tmp_path):
    events = [{"Type": "network", "Action": "create", "Actor": {"ID": "n1"}},
              {"Type": "container", "Action": "create", "Actor": {"ID": "c1"}}]
    inspected: list[str] = []
    done = asyncio.Event()

    async def stream(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        for ev in events:
            await resp.write((json.dumps(ev) + "\n").encode())
        await done.wait()
        return resp

    async def containers(request: web.Request) -> web.Response:
        return web.json_response([])

    async def inspect(request: web.Request) -> web.Response:
        inspected.append(request.match_info["cid"])
        return web.json_response({}, status=404)

    app = web.Application()
    app.router.add_get("/events", stream)
    app.router.add_get("/containers/json", containers)
    app.router.add_get("/containers/{cid}/json", inspect)
    runner = web.AppRunner(app)
    await runner.setup()
    sock = str(tmp_path / "docker.sock")
    await web.UnixSite(runner, sock).start()

    calls: list[int] = []

    async def changed() -> None:
        calls.append(1)

    async def update(*_: object) -> None:
        raise AssertionError("no endpoint of ours is involved")

    watcher = DockerWatcher(sock, lambda nid: False, update, changed)
    watcher.start()
    try:
        for _ in range(100):
            if len(calls) >= 2:
                break
            await asyncio.sleep(0.02)
        assert len(calls) == 2  # once on connecting, once for the network create event
        assert inspected == []  # a container create event is not a start: nothing to inspect yet
    finally:
        done.set()
        await watcher.stop()
        await runner.cleanup()
