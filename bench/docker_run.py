"""Time `docker run --rm NET busybox true` on cilium vs Docker's bridge, interleaved.

Both networks carry the same address families (IPv4 + IPv6): an IPv6-enabled
network makes every `docker run` slower in dockerd itself, so comparing a
dual-stack cilium network with an IPv4-only bridge would flatter the bridge.
Runs alternate A B A B ... so machine drift hits both sides alike; the median
is reported. Needs dockerd and an agent on the default plugin socket, or
``--start-agent``: a private agent (own dirs and bpffs, the default plugin
socket: run under ``flock /tmp/dc-e2e.lock``) started with ``--debug``.

Per-call breakdown: each ``plugin.call`` line an agent with ``--debug`` logs
(``--agent-log``, or the private agent's) during a cilium run is summed per
libnetwork method; the median per run of each, and of their total, is
reported next to the run's wall time ("outside the agent": dockerd, the
container, the socket round trips).

    flock /tmp/dc-e2e.lock .venv/bin/python -m bench.docker_run --start-agent --json

Measured (main 40e0eb5 vs this change, interleaved, -n 7, median per run, ms
in the agent): CreateEndpoint 14.5/12.0 -> 4.9/6.4, DeleteEndpoint
25.2/24.9 -> 6.6/5.9, all calls 46.0/44.4 -> 18.5/18.8; ratio cilium/bridge
1.105/1.023 -> 0.973/1.011 (about 520-550 ms of each run is outside the agent).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from bench.common import figure, ratios, spread

DOCKER = "/usr/bin/docker"


def sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, check=check)


def time_run(net: str) -> float:
    t0 = time.perf_counter()
    sh(DOCKER, "run", "--rm", "--net", net, "busybox", "true")
    return time.perf_counter() - t0


class CallLog:
    """The agent's ``plugin.call`` lines, read from where the last read stopped."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.offset = path.stat().st_size if path is not None and path.exists() else 0

    def calls(self) -> dict[str, float]:
        """ms in the agent per libnetwork method since the last call."""
        out: dict[str, float] = defaultdict(float)
        if self.path is None:
            return out
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        self.offset += len(data)
        for line in data.splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict) and rec.get("event") == "plugin.call":
                out[rec["method"]] += rec["duration_ms"]
        return out


def breakdown(per_run: list[dict[str, float]], walls: list[float]) -> dict[str, float] | None:
    """Median per run of each method's time in the agent (ms), their total, and the rest of the run."""
    if not per_run or not any(per_run):
        return None
    methods = sorted({m for run in per_run for m in run},
                     key=lambda m: -statistics.median(r.get(m, 0) for r in per_run))
    out = {m: round(statistics.median(r.get(m, 0.0) for r in per_run), 2) for m in methods}
    totals = [sum(r.values()) for r in per_run]
    out["total in the agent"] = round(statistics.median(totals), 2)
    out["outside the agent"] = round(statistics.median(w * 1000 - t for w, t in zip(walls, totals)), 1)
    return out


def start_agent(workdir: Path):  # -> tests.helpers.Agent
    from tests.helpers import Agent

    return Agent(workdir).start(timeout=60)


def stop_agent(agent) -> None:
    from tests.e2e.conftest import cleanup_bpf

    agent.stop()
    cleanup_bpf(agent.bpf_root)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("-n", type=int, default=9, help="runs per network")
    ap.add_argument("--agent-log", type=Path, help="log of the running agent (--debug, --log-format json)")
    ap.add_argument("--start-agent", action="store_true", help="start a private --debug agent on the default socket")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    tmp = tempfile.TemporaryDirectory(prefix="dcb-run-", dir="/tmp") if args.start_agent else None
    agent = start_agent(Path(tmp.name)) if tmp is not None else None
    log = CallLog(agent.log_path if agent is not None else args.agent_log)
    cilium, bridge = "bench-cilium", "bench-bridge"
    for net in (cilium, bridge):
        sh(DOCKER, "network", "rm", net, check=False)
    sh(DOCKER, "network", "create", "--ipv6", "--subnet", "::1/112", "--driver", "cilium",
       "--ipam-driver", "cilium", cilium)
    sh(DOCKER, "network", "create", "--ipv6", "--subnet", "fd00:bec::/64", bridge)
    try:
        time_run(cilium), time_run(bridge)  # warm-up
        a, b = [], []
        per_run: list[dict[str, float]] = []
        for _ in range(args.n):
            log.calls()
            a.append(time_run(cilium))
            per_run.append(log.calls())
            b.append(time_run(bridge))
    finally:
        for net in (cilium, bridge):
            sh(DOCKER, "network", "rm", net, check=False)
        if agent is not None:
            stop_agent(agent)
        if tmp is not None:
            tmp.cleanup()
    res = {
        "runs": args.n,
        "cilium_median_s": round(statistics.median(a), 4),
        "bridge_median_s": round(statistics.median(b), 4),
        "ratio_cilium_over_bridge": round(statistics.median(x / y for x, y in zip(a, b)), 3),
        "cilium_min_max_s": [round(min(a), 4), round(max(a), 4)],
        "bridge_min_max_s": [round(min(b), 4), round(max(b), 4)],
        "cilium_breakdown_ms": breakdown(per_run, a),
    }
    res["figures"] = [figure(
        "docker run --rm, cilium / bridge (dual-stack)", res["ratio_cilium_over_bridge"], "x",
        goal="<= 1.0x bridge", baseline="bridge", rounds=ratios(a, b),
        absolute=f"cilium {spread(a, 's', 3)}, bridge {spread(b, 's', 3)}; median of per-run ratios")]
    print(json.dumps(res, indent=2) if args.json else
          f"docker run --rm (dual-stack), median of {args.n} interleaved: cilium {res['cilium_median_s']} s, "
          f"bridge {res['bridge_median_s']} s, ratio {res['ratio_cilium_over_bridge']}\n"
          f"time in the agent per libnetwork call (ms, median per run): {res['cilium_breakdown_ms']}")


if __name__ == "__main__":
    main()
