"""The L7 proxy's memory with many idle client connections.

The proxy runs alone in a child process (a ProxyManager with one redirect,
each accepted connection served by ``ProxyManager.serve`` with the upstream
as its original destination, as a redirected connection would be; no TPROXY
needed). The parent opens ``--connections`` client connections and reads the
child's VmRSS: once with the connections only open (no request yet: the
slowloris case is bounded by the head timeout) and once after each sent one
allowed keep-alive request (then each also holds an upstream connection).

    PYTHONPATH=. .venv/bin/python bench/proxy_memory.py --connections 1000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys

from aiohttp import web


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def child(upstream_port: int) -> None:
    """The proxy process: prints its front port, serves until stdin closes."""
    from docker_cilium.policy.api.l7 import PortRuleHTTP
    from docker_cilium.proxy.accesslog import AccessLog
    from docker_cilium.proxy.http import ProxyLimits
    from docker_cilium.proxy.manager import ProxyManager
    from docker_cilium.proxy.peers import Peer
    from docker_cilium.proxy.redirect import EndpointAddr, RedirectKey

    class Peers:
        def peer(self, ip: str) -> Peer:
            return Peer(1001)

    mgr = ProxyManager(Peers(), AccessLog(None), transparent=False, bind4="127.0.0.1", bind6="::1",
                       port_min=30000, port_max=30999, limits=ProxyLimits(header_timeout=600, idle_timeout=600))
    key = RedirectKey(1, "ingress", upstream_port, 6)
    await mgr.update_endpoint(EndpointAddr(1, 1002, "127.0.0.1", None),
                              {key: {1001: (PortRuleHTTP(method="GET", path="/public"),)}})
    red = mgr.redirects[key]
    srv = await asyncio.start_server(
        lambda r, w: mgr.serve(red, r, w, ("127.0.0.1", upstream_port), w.get_extra_info("peername")),
        "127.0.0.1", 0, backlog=4096)
    print("PORT", srv.sockets[0].getsockname()[1], flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await mgr.close()


async def main(n: int) -> dict[str, int]:
    async def public(_: web.Request) -> web.Response:
        return web.Response(text="public\n")
    app = web.Application()
    app.router.add_get("/public", public)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=4096)
    await site.start()
    up_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    proc = subprocess.Popen([sys.executable, __file__, "--child", str(up_port)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdin is not None
    line = ""
    while not line.startswith("PORT "):  # the child's log lines come first
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError("the proxy process ended")
    port = int(line.split()[1])
    await asyncio.sleep(0.3)
    out = {"connections": n, "rss_start_kib": rss_kib(proc.pid)}
    conns = []
    for _ in range(n):
        conns.append(await asyncio.open_connection("127.0.0.1", port))
    await asyncio.sleep(1.0)
    out["rss_open_kib"] = rss_kib(proc.pid)
    for r, w in conns:
        w.write(b"GET /public HTTP/1.1\r\nHost: app1\r\n\r\n")
    for r, w in conns:
        await r.readuntil(b"public\n")
    await asyncio.sleep(1.0)
    out["rss_after_request_kib"] = rss_kib(proc.pid)
    out["per_connection_open_bytes"] = (out["rss_open_kib"] - out["rss_start_kib"]) * 1024 // n
    out["per_connection_after_request_bytes"] = (out["rss_after_request_kib"] - out["rss_start_kib"]) * 1024 // n
    for _, w in conns:
        w.close()
    proc.stdin.close()
    proc.wait(10)
    await runner.cleanup()
    return out


if __name__ == "__main__":
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        asyncio.run(child(int(sys.argv[2])))
        sys.exit(0)
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--connections", type=int, default=1000)
    args = ap.parse_args()
    os.environ.setdefault("PYTHONPATH", os.getcwd())
    print(json.dumps(asyncio.run(main(args.connections)), indent=1))
