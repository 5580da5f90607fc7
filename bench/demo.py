"""Time of a cold `make demo` (the handbook walkthrough) on this host.

Cold means: no agent running (the demo starts one on fresh state directories,
so the datapath is compiled by clang, not taken from the object cache), no
demo image (built from busybox-static under a bench-only tag), no cilium-net.
Each run also times a warm rerun over the running demo and `make demo-down`.
Runs `scripts/demo.sh` directly (what `make demo` runs after `make install`).
No other agent may serve the plugin socket meanwhile; on a shared machine run
it under the e2e lock: `flock /tmp/dc-e2e.lock python -m bench.demo`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IMAGE = "docker-cilium-demo-bench:cold"


def demo(action: str, env: dict[str, str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    res = subprocess.run([str(ROOT / "scripts" / "demo.sh"), action], env=env, capture_output=True, text=True,
                         timeout=600)
    elapsed = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"demo.sh {action} failed:\n{res.stdout}\n{res.stderr}")
    return elapsed, res.stdout


def one_run() -> dict[str, float]:
    work = tempfile.mkdtemp(prefix="dc-bench-demo-")
    env = {**os.environ, "DEMO_IMAGE": IMAGE, "DEMO_RUN_DIR": work, "DEMO_AGENT_LOG": f"{work}/agent.log",
           "CILIUM_HOST": f"{work}/cilium.sock",
           "DEMO_AGENT_FLAGS": f"--kvstore local --lib-dir {work}/lib --state-dir {work}/state "
                               f"--socket-path {work}/cilium.sock --bpf-root /sys/fs/bpf/dc-bench-demo"}
    subprocess.run(["docker", "rmi", "-f", IMAGE], capture_output=True)
    try:
        cold, out = demo("up", env)
        assert "app3 -> app1 : denied" in out.split("== after the policy")[1], out
        warm, _ = demo("up", env)
    finally:
        down, _ = demo("down", env)
        subprocess.run(["docker", "rmi", "-f", IMAGE], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    return {"cold_s": round(cold, 2), "warm_rerun_s": round(warm, 2), "down_s": round(down, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    runs = [one_run() for _ in range(args.runs)]
    result = {"runs": runs, **{f"median_{k}": statistics.median(r[k] for r in runs) for k in runs[0]}}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
