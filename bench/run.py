"""`make bench`: every benchmark, side by side with Docker's bridge and a bare veth.

Starts an agent with private state directories when none answers on the
default socket (and stops it afterwards), then runs each benchmark module and
writes the combined figures to bench/results/<UTC timestamp>.json.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent


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
    raise SystemExit(f"the agent did not start; see {workdir}/agent.log")


def run_module(name: str, *args: str) -> dict:
    out = subprocess.run([sys.executable, "-m", f"bench.{name}", *args], capture_output=True, text=True,
                         cwd=HERE.parent, check=True).stdout
    return json.loads(out)


def main() -> None:
    proc = None
    workdir = tempfile.mkdtemp(prefix="cilium-bench-")
    if not agent_running():
        proc = start_agent(workdir)
    try:
        results = {
            "docker_run": run_module("docker_run", "--json"),
            "tcp_throughput": run_module("throughput", "--cilium", str(BIN / "cilium")),
            "datapath_compile": run_module("datapath_compile", "--json"),
            "init_window": run_module("init_window", "--json"),
            "monitor_overhead": run_module("monitor_overhead"),
            "prefilter": run_module("prefilter", "--json"),
            "socket_lb": run_module("socket_lb"),
            "published_port": run_module("published_port", "--cilium", str(BIN / "cilium")),
            "service": run_module("service", "--cilium", str(BIN / "cilium")),
            "l7_proxy": run_module("l7", "--cilium", str(BIN / "cilium")),
        }
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=20)
    out_dir = HERE / "results"
    out_dir.mkdir(exist_ok=True)
    path = out_dir / time.strftime("%Y%m%dT%H%M%SZ.json", time.gmtime())
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    print(f"written to {path}")


if __name__ == "__main__":
    main()
