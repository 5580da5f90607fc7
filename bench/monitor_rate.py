"""Event rate one `cilium monitor -j` sustains without loss, agent side:
drop events (decoded from real-shaped DatapathEvents, as the perf reader
hands them over) published at a fixed rate through MonitorHub and the real
GET /v1/monitor app on a unix socket to a `cilium monitor -j` process that
counts what it got. The kernel's perf ring is not in this path (see
bench/monitor_overhead.py for the datapath's cost).

    python -m bench.monitor_rate [RATE ...]
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time

from aiohttp import web

from docker_cilium.api import monitor as monitor_api
from docker_cilium.api.keys import DAEMON
from docker_cilium.monitor.events import decode, now_rfc3339
from docker_cilium.monitor.hub import MonitorHub
from docker_cilium.datapath.maps.eventsmap import NOTIFY_DROP, DatapathEvent
from tests import packets

SECONDS = 3.0


class _Daemon:
    def __init__(self) -> None:
        self.monitor = MonitorHub()

    def monitor_status(self) -> dict:
        return self.monitor.status()


async def run(rate: int) -> tuple[int, int, int]:
    daemon = _Daemon()
    app = web.Application()
    app[DAEMON] = daemon  # type: ignore[assignment]
    app.router.add_routes(monitor_api.routes)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    path = os.path.join(tempfile.mkdtemp(), "m.sock")
    await web.UnixSite(runner, path).start()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "docker_cilium.cli.main", "-H", path, "monitor", "-j",
        stdout=subprocess.PIPE)

    async def count() -> tuple[int, int]:
        got = lost = 0
        assert proc.stdout is not None
        async for line in proc.stdout:
            if b'"type":"drop"' in line:
                got += 1
            elif b'"type":"lost"' in line:
                lost += int(line.split(b'"lost":')[1].split(b",")[0])
        return got, lost

    counter = asyncio.create_task(count())
    while not daemon.monitor.subscribers:
        await asyncio.sleep(0.01)
    tick = 0.005  # the reader drains the rings in batches like this
    per_tick = max(1, int(rate * tick))
    sent, t0 = 0, time.perf_counter()
    echo = packets.eth(packets.mac("02:00:00:00:00:02"), packets.mac("02:00:00:00:00:01"), packets.ETH_P_IP,
                       packets.ipv4("10.11.13.37", "10.11.101.61", 1, packets.echo_request()))
    ev = DatapathEvent(cpu=1, type=NOTIFY_DROP, subtype=133, source=25729, hash=0xABC, len_orig=len(echo),
                       len_cap=len(echo), src_label=261, dst_label=264, dst_id=25729, ifindex=7, data=echo)
    while time.perf_counter() - t0 < SECONDS:
        stamp = now_rfc3339()
        for _ in range(per_tick):
            daemon.monitor.publish(decode(ev, stamp, None))
        sent += per_tick
        await asyncio.sleep(max(0.0, t0 + sent / rate - time.perf_counter()))
    await asyncio.sleep(1.0)
    proc.terminate()
    got, lost = await counter
    daemon.monitor.close()
    await runner.cleanup()
    return sent, got, lost


def main() -> None:
    rates = [int(r) for r in sys.argv[1:]] or [5000, 10000, 20000, 40000]
    for rate in rates:
        sent, got, lost = asyncio.run(run(rate))
        print(f"rate {rate}/s: sent {sent}, received {got}, lost {lost} ({'no loss' if got == sent else 'LOSS'})")


if __name__ == "__main__":
    main()
