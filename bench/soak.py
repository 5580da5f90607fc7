"""`make soak`: the churn of tests/e2e/test_churn.py for ``--seconds``
(``SOAK_SECONDS``, default an hour), with the agent's RSS, open fds and map
occupancy sampled every ``--interval`` seconds.

Starts its own agent (private lib, state and bpffs directories) on the
shared plugin socket, so run it under ``flock /tmp/dc-e2e.lock``. Each round
starts ``--per-round`` containers ``--at-once`` at a time on a dual-stack
cilium network, checks that no address is held twice, removes them and checks
that the datapath holds what it held before (links, routes, endpoint/policy/
ipcache entries, conntrack, iptables); the agent is kill -9ed and restarted
during round 1 and then every ``--kill-every`` rounds (0: once). At the end,
the stores too must be as before (KV keys, IPAM allocations).

Writes ``samples.json``, ``result.json`` and ``rss.png``, ``fds.png``,
``maps.png`` under ``bench/results/soak-<UTC time>/`` and prints the result
(CONTRACT15 "figures" and "series") on stdout.

    flock /tmp/dc-e2e.lock .venv/bin/python -m bench.soak --seconds 600
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from tests.e2e.churn import (CHURN_AGENT_FLAGS, Batch, addresses, alloc_ranges, duplicates, leaks, occupancy,
                             remove_containers, snapshot)
from tests.e2e.conftest import cleanup_bpf, cleanup_docker, cleanup_host, create_network
from tests.helpers import Agent, wait_until

RESULTS = Path(__file__).resolve().parent / "results"
KILL_BATCH, KILL_AFTER_S = 1, 0.4


def log(msg: str) -> None:
    print(f"[soak] {msg}", file=sys.stderr, flush=True)


class Sampler(threading.Thread):
    """Every ``interval`` s: the agent's RSS and open fds (from /proc) and the maps' occupancy."""

    def __init__(self, agent: Agent, interval: float) -> None:
        super().__init__(daemon=True)
        self.agent, self.interval = agent, interval
        self.up = threading.Event()  # cleared from a kill -9 until the restarted agent answers
        self.up.set()
        self.samples: list[dict[str, Any]] = []
        self.t0 = time.monotonic()
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(self.interval):
            try:
                sample = self.sample()
            except (OSError, StopIteration):  # the agent exiting under the read
                continue
            if sample is not None:
                self.samples.append(sample)

    def sample(self) -> dict[str, Any] | None:
        proc = self.agent.proc
        if not self.up.is_set() or proc is None or proc.poll() is not None:
            return None
        with open(f"/proc/{proc.pid}/status") as f:
            rss_kib = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        return {"t": round(time.monotonic() - self.t0, 1), "pid": proc.pid, "rss_mib": round(rss_kib / 1024, 2),
                "fds": len(os.listdir(f"/proc/{proc.pid}/fd")), "maps": occupancy(self.agent)}

    def stop(self) -> None:
        self._halt.set()
        self.join()


class Soak:
    """The churn rounds against one agent, and what they found."""

    def __init__(self, agent: Agent, sampler: Sampler, net: str, net_id: str, args: argparse.Namespace) -> None:
        self.agent, self.sampler, self.net, self.net_id, self.args = agent, sampler, net, net_id, args
        self.ranges = alloc_ranges(agent)
        self.router4 = agent.cli_json("config")["addressing"]["ipv4"]["ip"]
        self.ipam_before = agent.cli_json("status")["ipam"]["allocations"]
        self.before = snapshot(agent, self.ranges)
        self.churned: set[str] = set()
        self.problems: dict[str, list[str]] = {"duplicates": [], "leaks": [], "failed_runs": []}
        self.rounds = self.kills = 0
        self.steady_at = 0.0  # sampler time when the first round after the last restart ended

    def kill_round(self, rnd: int) -> bool:
        every = self.args.kill_every
        return rnd == 1 or (every > 0 and rnd > 1 and (rnd - 1) % every == 0)

    def round(self, rnd: int) -> None:
        live: list[str] = []
        for b in range(self.args.per_round // self.args.at_once):
            batch = [f"soak-r{rnd}b{b}c{i}" for i in range(self.args.at_once)]
            started = Batch(batch, self.net, self.router4, [f"churn=set{i % 3}" for i in range(len(batch))])
            if b == KILL_BATCH and self.kill_round(rnd):
                time.sleep(KILL_AFTER_S)
                self.sampler.up.clear()
                self.agent.kill9()
                self.agent.start()
                self.sampler.up.set()
                self.kills += 1
            self.problems["failed_runs"] += [f"{r.name}: {r.error}" for r in started.results() if not r.ok]
            live += batch
            addrs = addresses(live, self.net)
            eps = [e for e in self.agent.cli_json("endpoint", "list") if e["docker-network-id"] == self.net_id]
            self.problems["duplicates"] += [f"round {rnd}: {d}" for d in duplicates(addrs, eps)]
            self.churned |= {ip for pair in addrs.values() for ip in pair if ip}
        for b in range(0, len(live), self.args.at_once):
            remove_containers(live[b:b + self.args.at_once])
        wait_until(lambda: not [e for e in self.agent.cli_json("endpoint", "list")
                                if e["docker-network-id"] == self.net_id], timeout=30, what="endpoints gone")
        found = leaks(self.before, snapshot(self.agent, self.ranges), self.churned, kv=False)
        self.problems["leaks"] += [f"round {rnd}: {leak}" for leak in found]
        self.rounds += 1
        if self.kill_round(rnd):
            self.steady_at = time.monotonic() - self.sampler.t0

    def final_leaks(self) -> list[str]:
        """The whole state as before, the stores too (identity GC runs every 30 s)."""
        last: list[str] = []

        def clean() -> bool:
            nonlocal last
            last = leaks(self.before, snapshot(self.agent, self.ranges), self.churned)
            return not last
        try:
            wait_until(clean, timeout=75, interval=1, what="the host as before")
        except AssertionError:
            pass
        allocations = self.agent.cli_json("status")["ipam"]["allocations"]
        extra = sorted(set(allocations) - set(self.ipam_before))
        return last + [f"ipam allocation {ip}" for ip in extra]


def spread(values: list[float]) -> tuple[float, float]:
    return (min(values), max(values)) if values else (0.0, 0.0)


def figures(soak: Soak, samples: list[dict[str, Any]], final: list[str], seconds: float) -> list[dict[str, Any]]:
    """CONTRACT15 rows: the correctness counts against their goal of 0, and the
    final agent's RSS and fd growth, from the end of the round it was restarted in to the end."""
    last_pid = samples[-1]["pid"] if samples else None
    mine = [s for s in samples if s["pid"] == last_pid]
    mine = [s for s in mine if s["t"] >= soak.steady_at] or mine
    rss, fds = [s["rss_mib"] for s in mine], [s["fds"] for s in mine]
    rss_growth = round(rss[-1] - rss[0], 2) if rss else None
    fd_growth = fds[-1] - fds[0] if fds else None
    dup, leaked = len(soak.problems["duplicates"]), len(soak.problems["leaks"]) + len(final)
    lo, hi = spread(rss)
    return [
        {"name": "soak: addresses held twice", "value": dup, "unit": "count", "goal": "0", "met": dup == 0,
         "baseline": None, "ratio": None, "absolute": f"{soak.rounds} rounds, {soak.kills} kill -9, {seconds:.0f} s",
         "min": None, "max": None},
        {"name": "soak: leaked objects", "value": leaked, "unit": "count", "goal": "0", "met": leaked == 0,
         "baseline": None, "ratio": None, "absolute": f"{len(soak.problems['leaks'])} after rounds, {len(final)} at "
                                                      f"the end", "min": None, "max": None},
        {"name": "soak: agent RSS growth", "value": rss_growth, "unit": "MiB", "goal": None, "met": None,
         "baseline": None, "ratio": None, "absolute": f"RSS {rss[0] if rss else 0} -> {rss[-1] if rss else 0} MiB "
                                                      f"({lo}-{hi})", "min": lo, "max": hi},
        {"name": "soak: agent open fds growth", "value": fd_growth, "unit": "fds", "goal": None, "met": None,
         "baseline": None, "ratio": None, "absolute": f"fds {fds[0] if fds else 0} -> {fds[-1] if fds else 0}",
         "min": min(fds) if fds else None, "max": max(fds) if fds else None},
    ]


def series(samples: list[dict[str, Any]]) -> dict[str, Any]:
    x = [s["t"] for s in samples]
    names = sorted({k for s in samples for k in s["maps"]})
    return {
        "soak_rss": {"title": "agent RSS during the soak (kill -9 restarts it)", "xlabel": "s", "ylabel": "MiB",
                     "x": x, "lines": {"agent RSS": [s["rss_mib"] for s in samples]}},
        "soak_fds": {"title": "agent open fds during the soak", "xlabel": "s", "ylabel": "fds",
                     "x": x, "lines": {"open fds": [s["fds"] for s in samples]}},
        "soak_maps": {"title": "map occupancy during the soak", "xlabel": "s", "ylabel": "entries",
                      "x": x, "lines": {n: [s["maps"].get(n, 0) for s in samples] for n in names}},
    }


def plot(charts: dict[str, Any], out: Path) -> list[str]:
    """One PNG per series (matplotlib, no display)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    for key, chart in charts.items():
        fig, ax = plt.subplots(figsize=(8, 4))
        for label, ys in chart["lines"].items():
            ax.plot(chart["x"], ys, label=label)
        ax.set(title=chart["title"], xlabel=chart["xlabel"], ylabel=chart["ylabel"])
        ax.legend(loc="best", fontsize="small")
        ax.grid(alpha=0.3)
        path = out / f"{key.removeprefix('soak_')}.png"
        fig.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(fig)
        files.append(str(path))
    return files


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=float(os.environ.get("SOAK_SECONDS", 3600)))
    ap.add_argument("--interval", type=float, default=5.0, help="seconds between samples")
    ap.add_argument("--per-round", type=int, default=30)
    ap.add_argument("--at-once", type=int, default=10)
    ap.add_argument("--kill-every", type=int, default=0, help="kill -9 the agent every N rounds after round 1")
    ap.add_argument("--out", type=Path, default=None, help="default bench/results/soak-<UTC time>")
    ap.add_argument("--json", action="store_true", help="print only the JSON result on stdout")
    return ap.parse_args()


def main() -> None:
    args = parse_args()
    out = args.out or RESULTS / time.strftime("soak-%Y%m%dT%H%M%SZ", time.gmtime())
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="soak-", dir="/tmp") as tmp:
        agent = Agent(Path(tmp) / f"soak{os.getpid()}", extra=CHURN_AGENT_FLAGS)  # its bpffs directory: dctest-soak<pid>
        cleanup_docker()
        cleanup_host()
        sampler = None
        try:
            agent.start()
            net = "soak-net"
            net_id = create_network(net, "--ipv6", "--subnet", "::1/112", "--driver", "cilium",
                                    "--ipam-driver", "cilium")
            sampler = Sampler(agent, args.interval)
            soak = Soak(agent, sampler, net, net_id, args)
            sampler.start()
            t0 = time.monotonic()
            while time.monotonic() - t0 < args.seconds:
                soak.round(soak.rounds)
                log(f"round {soak.rounds} done at {time.monotonic() - t0:.0f} s; "
                    f"problems so far: { {k: len(v) for k, v in soak.problems.items()} }")
            elapsed = time.monotonic() - t0
            sampler.stop()
            final = soak.final_leaks()
        finally:
            if sampler is not None and sampler.is_alive():
                sampler.stop()
            cleanup_docker()
            agent.stop()
            cleanup_host()
            cleanup_bpf(agent.bpf_root)
    samples = sampler.samples
    result = {"seconds": round(elapsed, 1), "rounds": soak.rounds, "kills": soak.kills,
              "problems": {k: v[:50] for k, v in soak.problems.items()}, "final_leaks": final[:50],
              "figures": figures(soak, samples, final, elapsed), "series": series(samples)}
    (out / "samples.json").write_text(json.dumps(samples))
    result["charts"] = plot(result["series"], out)
    (out / "result.json").write_text(json.dumps(result, indent=2))
    log(f"results in {out}")
    print(json.dumps(result if args.json else {k: v for k, v in result.items() if k != "series"}, indent=2))


if __name__ == "__main__":
    main()
