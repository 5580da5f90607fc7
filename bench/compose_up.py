"""Time `docker-compose up` of compose/ to a working network.

Each run starts from nothing but the images (built beforehand, timed apart as
`image_build_s` when this run had to build them): `up -d` of etcd + agent,
then `up -d` of the demo (cilium-net + app1..3), then the first HTTP answer
app2 gets from app1. Private driver name and state directories (as the e2e
test's), torn down after each run. Run it as root with the e2e lock held, as
the agent takes over the host's cilium_host:

    flock /tmp/dc-e2e.lock python -m bench.compose_up [-n 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

from tests.e2e.shipenv import ComposeEnv, build_agent_image, reaches
from tests.helpers import wait_until


def one_run() -> dict[str, float]:
    env = ComposeEnv("bench")
    try:
        t0 = time.monotonic()
        env.compose("agent", "up", "-d")
        wait_until(lambda: os.path.exists(env.plugin_socket), timeout=60, interval=0.05,
                   what="plugin socket")
        t_agent = time.monotonic()
        env.compose("demo", "up", "-d")
        t_demo = time.monotonic()
        app2, ip1 = env.container("app2"), env.address("app1")
        wait_until(lambda: reaches(app2, ip1), timeout=30, interval=0.05, what="app2 -> app1")
        t_ok = time.monotonic()
        return {"agent_up_s": t_agent - t0, "demo_up_s": t_demo - t_agent, "first_reply_s": t_ok - t_demo,
                "total_s": t_ok - t0}
    finally:
        env.down()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("-n", type=int, default=3, help="runs")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    t0 = time.monotonic()
    build_agent_image()
    build_s = time.monotonic() - t0
    runs = [one_run() for _ in range(args.n)]
    result = {"image_build_s": round(build_s, 2),
              **{k: round(statistics.median(r[k] for r in runs), 2) for k in runs[0]},
              "runs": [{k: round(v, 2) for k, v in r.items()} for r in runs]}
    if args.json:
        print(json.dumps(result))
        return
    print(f"image build (0 when up to date): {result['image_build_s']} s")
    print(f"docker-compose up to a working network, median of {args.n}: {result['total_s']} s "
          f"(etcd + agent up and serving {result['agent_up_s']} s, demo up {result['demo_up_s']} s, "
          f"first app2 -> app1 reply {result['first_reply_s']} s)")


if __name__ == "__main__":
    main()
