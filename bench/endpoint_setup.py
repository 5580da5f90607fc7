"""Endpoint set-up through the plugin protocol, as dockerd drives it, against
a private agent; and the agent's memory with many endpoints.

The agent runs in a network namespace of its own (``nsenter --net``: links,
routes and iptables never meet the machine's agent or another benchmark)
with its own lib/state dirs, bpffs directory, API and plugin sockets, so no
lock is needed. The benchmark speaks to the plugin socket exactly as dockerd
does: ``RequestPool`` and ``CreateNetwork`` once, then per endpoint
``RequestAddress`` (IPv4 and IPv6), ``CreateEndpoint``, ``Join``; tear-down
``Leave``, ``DeleteEndpoint``, ``ReleaseAddress`` (both). The figure is the
time of ``CreateEndpoint`` + ``Join`` seen by the caller (the veth, its
routes, its maps and both tc programs attached before the reply):

* one at a time (``--sequential`` endpoints): p50 and p99;
* ``--concurrency`` at once (``--rounds`` batches, each created together and
  removed before the next): p50 and p99 over every endpoint;
* ``--endpoints N`` (0 skips): the agent's RSS (``/proc/<pid>/status``)
  before and after N endpoints, created ``--concurrency`` at a time.

    .venv/bin/python -m bench.endpoint_setup --json

Measured (2 cores shared with other benchmarks: noisy), main 40e0eb5 vs this
change, interleaved A B A B, ``--sequential 50 --rounds 5 --endpoints 500``:

    figure                         before (2 runs)    after (2 runs)
    p50 one at a time (ms)         16.9, 24.1         8.3, 9.3
    p99 10 at once (ms)            151, 178           69, 193
    agent CPU per create+delete    24.2, 23.2 ms      12.2, 13.4 ms
    500 endpoints (create/delete)  8.5/12.2 s         4.6/3.3 s
    RSS, none -> 500 endpoints     65.5 -> 70.4 MiB   64.4 -> 67.6 MiB

In a quiet moment after: p50 one at a time 5.6 ms, p99 10 at once 45-47 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp

from bench.common import figure
from tests.helpers import Agent

GOAL_SEQ_P50 = "<= 5 ms"
GOAL_PAR_P99 = "<= 50 ms"


class NetnsAgent(Agent):
    """The test suites' agent, started inside network namespace ``netns``."""

    def __init__(self, workdir: Path, netns: str, debug: bool = False) -> None:
        super().__init__(workdir, plugin_socket=str(workdir / "plugin.sock"),
                         extra=["--ipv4-range", "10.199.0.0/16", "--ipv6-range", "fd00:199::/96",
                                "--bpf-lb-sock", "false", "--enable-l7-proxy", "false", "--no-masquerade",
                                "--docker-socket", str(workdir / "no-docker.sock"), "--mtu", "1500"])
        self.netns = netns
        self.debug = debug

    @property
    def argv(self) -> list[str]:
        """Without --debug unless asked (as the agent runs in production: debug
        logging costs per call what is measured here)."""
        argv = [a for a in super().argv if a != "--debug" or self.debug]
        return ["nsenter", f"--net=/run/netns/{self.netns}", *argv]

    def rss_mib(self) -> float:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS")

    def cpu_ms(self) -> float:
        """CPU time the agent used so far (user + system, every thread): less
        noisy than wall time on a shared machine."""
        assert self.proc is not None
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) * 1000 / os.sysconf("SC_CLK_TCK")


class Plugin:
    """A libnetwork client of the plugin socket (dockerd's calls, in its order)."""

    def __init__(self, socket_path: str) -> None:
        self.session = aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=socket_path, limit=64))
        self.net_id = uuid.uuid4().hex + uuid.uuid4().hex
        self.pools: dict[int, str] = {}

    async def call(self, method: str, body: dict[str, Any]) -> dict[str, Any]:
        async with self.session.post(f"http://plugin/{method}", json=body) as resp:
            reply = json.loads(await resp.read())
            if resp.status != 200:
                raise RuntimeError(f"{method}: {resp.status} {reply}")
            return reply

    async def create_network(self) -> None:
        data: dict[int, list[dict[str, Any]]] = {}
        for fam in (4, 6):
            r = await self.call("IpamDriver.RequestPool", {"AddressSpace": "CiliumLocal", "Pool": "",
                                                            "SubPool": "", "Options": {}, "V6": fam == 6})
            self.pools[fam] = r["PoolID"]
            data[fam] = [{"AddressSpace": "CiliumLocal", "Pool": r["Pool"],
                          "Gateway": r["Data"]["com.docker.network.gateway"], "AuxAddresses": {}}]
        await self.call("NetworkDriver.CreateNetwork", {"NetworkID": self.net_id, "Options": {},
                                                        "IPv4Data": data[4], "IPv6Data": data[6]})

    async def endpoint_up(self) -> tuple[str, dict[int, str], float]:
        """Addresses, then CreateEndpoint + Join (timed, ms)."""
        addrs = {}
        for fam in (4, 6):
            r = await self.call("IpamDriver.RequestAddress", {"PoolID": self.pools[fam], "Address": "",
                                                              "Options": {}})
            addrs[fam] = r["Address"]
        eid = uuid.uuid4().hex + uuid.uuid4().hex
        t0 = time.perf_counter()
        await self.call("NetworkDriver.CreateEndpoint", {
            "NetworkID": self.net_id, "EndpointID": eid, "Options": {},
            "Interface": {"Address": addrs[4], "AddressIPv6": addrs[6], "MacAddress": ""}})
        await self.call("NetworkDriver.Join", {"NetworkID": self.net_id, "EndpointID": eid,
                                               "SandboxKey": f"/var/run/docker/netns/{eid[:12]}", "Options": {}})
        return eid, addrs, (time.perf_counter() - t0) * 1000

    async def endpoint_down(self, eid: str, addrs: dict[int, str]) -> None:
        ref = {"NetworkID": self.net_id, "EndpointID": eid}
        await self.call("NetworkDriver.Leave", ref)
        await self.call("NetworkDriver.DeleteEndpoint", ref)
        for fam in (4, 6):
            await self.call("IpamDriver.ReleaseAddress", {"PoolID": self.pools[fam], "Address": addrs[fam]})

    async def batch(self, n: int, concurrency: int) -> tuple[list[tuple[str, dict[int, str]]], list[float]]:
        """``n`` endpoints, ``concurrency`` at once; returns them and each set-up time."""
        sem = asyncio.Semaphore(concurrency)

        async def one() -> tuple[str, dict[int, str], float]:
            async with sem:
                return await self.endpoint_up()

        done = await asyncio.gather(*(one() for _ in range(n)))
        return [(e, a) for e, a, _ in done], [ms for _, _, ms in done]

    async def teardown(self, eps: list[tuple[str, dict[int, str]]], concurrency: int) -> None:
        sem = asyncio.Semaphore(concurrency)

        async def one(e: str, a: dict[int, str]) -> None:
            async with sem:
                await self.endpoint_down(e, a)

        await asyncio.gather(*(one(e, a) for e, a in eps))


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return round(s[min(len(s) - 1, max(0, int(round(p / 100 * len(s) + 0.5)) - 1))], 2)


def spread(xs: list[float]) -> str:
    if not xs:
        return "none measured"
    return f"p50 {pct(xs, 50)} ms, p99 {pct(xs, 99)} ms (min {min(xs):.2f}, max {max(xs):.2f}; n={len(xs)})"


async def measure(agent: NetnsAgent, args: argparse.Namespace) -> dict[str, Any]:
    plugin = Plugin(agent.plugin_socket)
    try:
        await plugin.call("Plugin.Activate", {})
        await plugin.create_network()
        eps, _ = await plugin.batch(args.concurrency, args.concurrency)  # warm-up
        await plugin.teardown(eps, args.concurrency)
        seq: list[float] = []
        cpu0 = agent.cpu_ms()
        for _ in range(args.sequential):
            eid, addrs, ms = await plugin.endpoint_up()
            seq.append(ms)
            await plugin.endpoint_down(eid, addrs)
        cpu = (agent.cpu_ms() - cpu0) / max(1, args.sequential)
        par: list[float] = []
        for _ in range(args.rounds):
            eps, times = await plugin.batch(args.concurrency, args.concurrency)
            par += times
            await plugin.teardown(eps, args.concurrency)
        out: dict[str, Any] = {"sequential_ms": seq, "concurrent_ms": par, "agent_cpu_ms_per_cycle": round(cpu, 2)}
        if args.endpoints:
            rss0 = agent.rss_mib()
            t0 = time.perf_counter()
            eps, times = await plugin.batch(args.endpoints, args.concurrency)
            took = time.perf_counter() - t0
            await asyncio.sleep(1)  # background work of the creates (identity, monitor) settles
            rss1 = agent.rss_mib()
            t0 = time.perf_counter()
            await plugin.teardown(eps, args.concurrency)
            out["many"] = {"endpoints": args.endpoints, "rss_before_mib": round(rss0, 1),
                           "rss_after_mib": round(rss1, 1), "create_s": round(took, 2),
                           "delete_s": round(time.perf_counter() - t0, 2),
                           "setup_p50_ms": pct(times, 50), "setup_p99_ms": pct(times, 99)}
        return out
    finally:
        await plugin.session.close()


def _figure(name: str, xs: list[float], p: float, goal: str | None) -> dict[str, Any]:
    """One CONTRACT15 row: the ``p``th percentile of ``xs`` (ms)."""
    if not xs:
        return {"name": name, "value": None, "unit": "ms", "goal": goal, "met": None, "baseline": None,
                "ratio": None, "absolute": "none measured", "min": None, "max": None}
    return figure(name, pct(xs, p), "ms", goal=goal, absolute=spread(xs), rounds=xs, digits=2)


def figures(res: dict[str, Any], concurrency: int) -> list[dict[str, Any]]:
    seq, par = res["sequential_ms"], res["concurrent_ms"]
    out = [
        _figure("endpoint set-up p50, one at a time", seq, 50, GOAL_SEQ_P50),
        _figure("endpoint set-up p99, one at a time", seq, 99, None),
        _figure(f"endpoint set-up p50, {concurrency} at once", par, 50, None),
        _figure(f"endpoint set-up p99, {concurrency} at once", par, 99, GOAL_PAR_P99),
    ]
    many = res.get("many")
    if many:
        out.append(figure(f"agent RSS with {many['endpoints']} endpoints", many["rss_after_mib"], "MiB", digits=1,
                          absolute=f"{many['rss_before_mib']} MiB with none, {many['rss_after_mib']} MiB with "
                                   f"{many['endpoints']} (created in {many['create_s']} s)"))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sequential", type=int, default=50, help="endpoints set up one at a time")
    ap.add_argument("--concurrency", type=int, default=10, help="endpoints set up at once")
    ap.add_argument("--rounds", type=int, default=5, help="batches of --concurrency endpoints")
    ap.add_argument("--endpoints", type=int, default=500, help="endpoints for the RSS figure (0: skip)")
    ap.add_argument("--debug", action="store_true", help="run the agent with --debug (per-call log lines)")
    ap.add_argument("--keep", action="store_true", help="keep the agent's directory (its log) for a look")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    netns = f"dcbench-ep-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    tmp = tempfile.mkdtemp(prefix="dcb-ep-", dir="/tmp")
    agent = NetnsAgent(Path(tmp), netns, args.debug)
    try:
        subprocess.run(["ip", "-n", netns, "link", "set", "lo", "up"], check=True)
        agent.start(timeout=60)
        res = asyncio.run(measure(agent, args))
    finally:
        agent.stop()
        from tests.e2e.conftest import cleanup_bpf
        cleanup_bpf(agent.bpf_root)
        subprocess.run(["ip", "netns", "del", netns], check=False)  # its links, routes and rules go with it
        if args.keep:
            print(f"agent directory kept: {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    seq, par = res["sequential_ms"], res["concurrent_ms"]
    summary = {"agent_cpu_ms_per_cycle": res["agent_cpu_ms_per_cycle"], "sequential": spread(seq),
               f"{args.concurrency}_at_once": spread(par),
               "many": res.get("many"), "figures": figures(res, args.concurrency)}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        for f in summary["figures"]:
            print(f"{f['name']}: {f['value']} {f['unit']}  goal {f['goal']}  met {f['met']}  ({f['absolute']})")


if __name__ == "__main__":
    main()
