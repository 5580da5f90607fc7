"""Time `docker run --rm NET busybox true` on cilium vs Docker's bridge, interleaved.

Both networks carry the same address families (IPv4 + IPv6): an IPv6-enabled
network makes every `docker run` slower in dockerd itself, so comparing a
dual-stack cilium network with an IPv4-only bridge would flatter the bridge.
Runs alternate A B A B ... so machine drift hits both sides alike; the median
is reported. Needs a running agent and dockerd.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import time

from bench.common import figure, ratios, spread

DOCKER = "/usr/bin/docker"


def sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, check=check)


def time_run(net: str) -> float:
    t0 = time.perf_counter()
    sh(DOCKER, "run", "--rm", "--net", net, "busybox", "true")
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("-n", type=int, default=9, help="runs per network")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    cilium, bridge = "bench-cilium", "bench-bridge"
    for net in (cilium, bridge):
        sh(DOCKER, "network", "rm", net, check=False)
    sh(DOCKER, "network", "create", "--ipv6", "--subnet", "::1/112", "--driver", "cilium",
       "--ipam-driver", "cilium", cilium)
    sh(DOCKER, "network", "create", "--ipv6", "--subnet", "fd00:bec::/64", bridge)
    try:
        time_run(cilium), time_run(bridge)  # warm-up
        a, b = [], []
        for _ in range(args.n):
            a.append(time_run(cilium))
            b.append(time_run(bridge))
    finally:
        for net in (cilium, bridge):
            sh(DOCKER, "network", "rm", net, check=False)
    res = {
        "runs": args.n,
        "cilium_median_s": round(statistics.median(a), 4),
        "bridge_median_s": round(statistics.median(b), 4),
        "ratio_cilium_over_bridge": round(statistics.median(x / y for x, y in zip(a, b)), 3),
        "cilium_min_max_s": [round(min(a), 4), round(max(a), 4)],
        "bridge_min_max_s": [round(min(b), 4), round(max(b), 4)],
    }
    res["figures"] = [figure(
        "docker run --rm, cilium / bridge (dual-stack)", res["ratio_cilium_over_bridge"], "x",
        goal="<= 1.0x bridge", baseline="bridge", rounds=ratios(a, b),
        absolute=f"cilium {spread(a, 's', 3)}, bridge {spread(b, 's', 3)}; median of per-run ratios")]
    print(json.dumps(res, indent=2) if args.json else
          f"docker run --rm (dual-stack), median of {args.n} interleaved: cilium {res['cilium_median_s']} s, "
          f"bridge {res['bridge_median_s']} s, ratio {res['ratio_cilium_over_bridge']}")


if __name__ == "__main__":
    main()
