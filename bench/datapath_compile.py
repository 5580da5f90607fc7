"""Datapath compile cost: a cold clang build of bpf_lxc.c vs the cached lookup.

The agent compiles the datapath once per configuration (the object is named
by a hash of the sources, the defines and the clang version) and reuses it on
every later start; this measures both sides of that. Each cold build gets a
fresh output directory, so nothing is reused between samples. Needs clang and
the BPF sources only (no root, no agent).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from typing import Any, Callable

from bench.common import figure, spread
from docker_cilium import logging as dc_logging
from docker_cilium.datapath.loader import compile_datapath


def timed_ms(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("-n", type=int, default=3, help="cold builds")
    ap.add_argument("--cached-runs", type=int, default=20, help="cached lookups")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    dc_logging.setup()  # logs to stderr: stdout carries only the figures
    cold, cached = [], []
    for _ in range(args.n):
        with tempfile.TemporaryDirectory(prefix="bench-bpf-") as out:
            cold.append(timed_ms(lambda: compile_datapath(out_dir=out)))
            for _ in range(args.cached_runs):
                cached.append(timed_ms(lambda: compile_datapath(out_dir=out)))
    res = {
        "cold_builds": args.n,
        "cold_compile_median_ms": round(statistics.median(cold), 1),
        "cached_lookups": len(cached),
        "cached_median_ms": round(statistics.median(cached), 2),
        "cached_max_ms": round(max(cached), 2),
    }
    res["figures"] = [
        figure("datapath cold compile (clang)", statistics.median(cold), "ms", rounds=cold, digits=1,
               absolute=spread(cold, "ms", 1)),
        figure("datapath cached lookup", statistics.median(cached), "ms", rounds=cached,
               absolute=spread(cached, "ms")),
    ]
    print(json.dumps(res, indent=2) if args.json else
          f"datapath compile: cold {res['cold_compile_median_ms']} ms (median of {args.n}), "
          f"cached {res['cached_median_ms']} ms (median of {len(cached)}, max {res['cached_max_ms']} ms)")


if __name__ == "__main__":
    main()
