"""`make bench`: every benchmark, side by side with Docker's bridge, a bare
veth, iptables and etcd, gathered into one report (bench/report.py).

Runs each module below as ``python -m bench.<module>`` and reads the
CONTRACT15 "figures" and "series" from the JSON it prints; writes
bench/results/<UTC timestamp>/ (results.json, table.md, the PNG charts and
each module's log), prints the table and, on a full run, rewrites the
README's benchmark section. A module that is not in this tree, fails or
times out is a line in the report, never the end of the run.

Modules that bring their own agent (or need none) run first; then, if no
agent answers on the default socket, one is started with private state
directories for the modules that drive dockerd through it, and stopped
at the end.

Environment: ``BENCH_QUICK=1`` one short round each (minutes, for a smoke
run; passed on to the modules, which may read it too); ``BENCH_ONLY=a,b``
/ ``BENCH_SKIP=a,b`` by report name; ``BENCH_README=0`` leaves the README
alone; ``BENCH_CLUSTER=up`` brings up a 2-node cluster for bench.cluster
(otherwise it runs only against a cluster already up, ``make cluster``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import report

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
QUICK_ROUNDS = ("--rounds", "1", "--seconds", "2")


@dataclass(frozen=True)
class Module:
    """One benchmark as `make bench` runs it: full and BENCH_QUICK arguments."""

    name: str                       # the report's name
    module: str                     # bench.<module>
    full: tuple[str, ...] = ("--json",)
    quick: tuple[str, ...] = ("--json",)
    shared_agent: bool = False      # drives dockerd through the agent on the default sockets
    timeout_s: float = 900
    env: dict[str, str] = field(default_factory=dict)


CILIUM = ("--cilium", str(BIN / "cilium"))
MODULES = [
    # their own agent, datapath or store (no agent on the default sockets needed)
    Module("datapath_compile", "datapath_compile", quick=("--json", "-n", "1", "--cached-runs", "5")),
    Module("monitor_overhead", "monitor_overhead", full=(), quick=QUICK_ROUNDS),
    Module("prefilter", "prefilter", quick=("--json", "--seconds", "2")),
    Module("socket_lb", "socket_lb", full=(), quick=QUICK_ROUNDS),
    Module("identity_alloc", "identity_alloc", quick=("--json", "--labelsets", "50", "--rounds", "1")),
    Module("endpoint_setup", "endpoint_setup",
           quick=("--json", "--sequential", "10", "--rounds", "2", "--endpoints", "50")),
    Module("policy_scale", "policy_scale", full=(), quick=("--sizes", "1000", "--endpoint-runs", "1")),
    # through dockerd and the agent on the default sockets
    Module("docker_run", "docker_run", quick=("--json", "-n", "3"), shared_agent=True),
    Module("tcp_throughput", "throughput", full=CILIUM, quick=(*CILIUM, *QUICK_ROUNDS), shared_agent=True),
    Module("rr", "rr", full=("--json", *CILIUM), quick=("--json", *CILIUM, *QUICK_ROUNDS), shared_agent=True),
    Module("policy_rules", "policy_rules", shared_agent=True, timeout_s=1200),
    Module("init_window", "init_window", quick=("--json", "-n", "3"), shared_agent=True),
    Module("published_port", "published_port", full=CILIUM, quick=(*CILIUM, *QUICK_ROUNDS), shared_agent=True),
    Module("service", "service", full=CILIUM, quick=(*CILIUM, *QUICK_ROUNDS, "--connections", "500"),
           shared_agent=True),
    Module("l7_proxy", "l7", full=CILIUM, quick=(*CILIUM, *QUICK_ROUNDS), shared_agent=True),
]
CLUSTER = Module("cluster", "cluster", full=("--json", "--rounds", "3", "--containers", "50"),
                 quick=("--json", "--rounds", "1", "--seconds", "2", "--containers", "5"), timeout_s=1800)


def agent_running() -> bool:
    return subprocess.run([str(BIN / "cilium"), "status"], capture_output=True).returncode == 0


def start_agent(workdir: str) -> subprocess.Popen:
    log = open(os.path.join(workdir, "agent.log"), "w")
    proc = subprocess.Popen([str(BIN / "cilium-agent"), "--lib-dir", os.path.join(workdir, "lib"),
                             "--state-dir", os.path.join(workdir, "state"), "--log-format", "json"],
                            stdout=log, stderr=subprocess.STDOUT)
    for _ in range(100):
        if agent_running():
            return proc
        time.sleep(0.2)
    proc.kill()
    proc.wait()
    raise RuntimeError(f"the agent did not start in 20 s; see {workdir}/agent.log")


def last_json_object(text: str) -> dict[str, Any] | None:
    """The last top-level JSON object in ``text``: some modules print
    progress objects (one a line) before the full result."""
    decoder, found, i = json.JSONDecoder(), None, 0
    while (i := text.find("{", i)) >= 0:
        try:
            obj, end = decoder.raw_decode(text, i)
        except json.JSONDecodeError:
            i += 1
            continue
        if isinstance(obj, dict):
            found = obj
        i = end
    return found


def present(m: Module) -> bool:
    return importlib.util.find_spec(f"bench.{m.module}") is not None


def run_module(m: Module, quick: bool, log_dir: Path) -> dict[str, Any]:
    """Run one module; its status, seconds, output (the parsed JSON) or error."""
    if not present(m):
        return {"status": "missing", "error": f"bench/{m.module}.py is not in this tree"}
    args = m.quick if quick else m.full
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", **m.env}
    if quick:
        env["BENCH_QUICK"] = "1"
    cmd = [sys.executable, "-m", f"bench.{m.module}", *args]
    t0 = time.monotonic()
    log = log_dir / f"{m.name}.log"
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=HERE.parent, env=env,
                              timeout=m.timeout_s / (3 if quick else 1))
    except subprocess.TimeoutExpired as e:
        log.write_text(f"$ {' '.join(cmd)}\n(timed out)\n--- stderr\n{e.stderr or ''}")
        return {"status": "failed", "seconds": round(time.monotonic() - t0, 1), "command": cmd,
                "error": f"timed out after {e.timeout:.0f} s (log: {log})"}
    seconds = round(time.monotonic() - t0, 1)
    log.write_text(f"$ {' '.join(cmd)}\nexit {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}")
    out = last_json_object(proc.stdout)
    if proc.returncode != 0 or out is None:
        tail = (proc.stderr.strip().splitlines() or ["(no stderr)"])[-1]
        why = f"exit {proc.returncode}" if proc.returncode else "no JSON object on stdout"
        return {"status": "failed", "seconds": seconds, "command": cmd, "error": f"{why}: {tail} (log: {log})"}
    return {"status": "ok", "seconds": seconds, "command": cmd, "output": out}


def selected(modules: list[Module]) -> list[Module]:
    only = {s for s in os.environ.get("BENCH_ONLY", "").split(",") if s}
    skip = {s for s in os.environ.get("BENCH_SKIP", "").split(",") if s}
    unknown = (only | skip) - {m.name for m in modules}
    if unknown:
        raise SystemExit(f"BENCH_ONLY/BENCH_SKIP: no benchmark named {', '.join(sorted(unknown))} "
                         f"(known: {', '.join(m.name for m in modules)})")
    return [m for m in modules if (not only or m.name in only) and m.name not in skip]


def cluster_module() -> tuple[Module, str | None]:
    """bench.cluster with --up, against the running cluster, or why not."""
    how = os.environ.get("BENCH_CLUSTER", "")
    if how == "up":
        return Module(CLUSTER.name, CLUSTER.module, (*CLUSTER.full, "--up"), (*CLUSTER.quick, "--up"),
                      timeout_s=CLUSTER.timeout_s, env={"CLUSTER": "dc-bench-cluster",
                                                        "CLUSTER_SUBNET": "10.218.0.0/24"}), None
    from bench.cluster import Cluster

    name = os.environ.get("CLUSTER", "cilium-cluster")
    if Cluster({**os.environ, "CLUSTER": name}).running():
        return CLUSTER, None
    return CLUSTER, f"no cluster {name} is up (`make cluster` first, or BENCH_CLUSTER=up to bring one up)"


def main() -> None:
    quick = os.environ.get("BENCH_QUICK", "") not in ("", "0")
    started = time.time()
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(started))
    cluster, cluster_why = cluster_module()
    modules = selected([*MODULES, cluster])
    out_dir = HERE / "results" / stamp
    out_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)),
                               "quick": quick, "machine": report.machine(), "modules": {}}
    proc, agent_error = None, None
    workdir = tempfile.mkdtemp(prefix="cilium-bench-")
    try:
        for i, m in enumerate(sorted(modules, key=lambda m: (m.shared_agent, m is cluster)), 1):
            if m is cluster and cluster_why:
                results["modules"][m.name] = {"status": "skipped", "error": cluster_why}
                print(f"[{i}/{len(modules)}] bench.{m.module}: skipped: {cluster_why}", file=sys.stderr)
                continue
            if m.shared_agent and present(m) and proc is None and agent_error is None and not agent_running():
                try:
                    proc = start_agent(workdir)
                except RuntimeError as e:
                    agent_error = str(e)
            if m.shared_agent and present(m) and agent_error:
                results["modules"][m.name] = {"status": "failed", "error": agent_error}
                continue
            print(f"[{i}/{len(modules)}] bench.{m.module} ...", file=sys.stderr, flush=True)
            res = results["modules"][m.name] = run_module(m, quick, out_dir)
            print(f"[{i}/{len(modules)}] bench.{m.module}: {res['status']}"
                  + (f" in {res['seconds']:.0f} s" if "seconds" in res else "")
                  + (f": {res['error']}" if "error" in res else ""), file=sys.stderr, flush=True)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=20)
    finished = time.time()
    results["finished"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(finished))
    results["duration_s"] = round(finished - started, 1)
    paths = report.write(results, out_dir)
    print(report.table(results))
    print(f"\n{report.summary(results)}; {results['duration_s'] / 60:.1f} min on {report.machine_line(results['machine'])}")
    print(f"written to {out_dir}")
    if paths["chart_error"]:
        raise SystemExit(paths["chart_error"])
    if not quick and not os.environ.get("BENCH_ONLY") and os.environ.get("BENCH_README", "1") != "0":
        report.publish(results, paths["charts"], HERE.parent / "README.md")
        print("README.md's benchmark section updated")


if __name__ == "__main__":
    main()
