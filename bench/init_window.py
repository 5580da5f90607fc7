"""How long a container holds reserved:init after `docker run -d` returns.

Until Docker's event brings the container's labels and the agent has the
identity of those labels and its policy in the maps, the endpoint holds
reserved:init, whose policy passes nothing (beyond rules selecting
reserved:init): the window is the time the container has no connectivity
it will later be allowed. Each run starts a labelled container and polls the
agent's API (``GET /v1/endpoint/container-id:ID``, every 1 ms) until the
endpoint is ``ready`` with an allocated identity (>= 256); the regenerator
sets ``ready`` only after the maps are written. Needs a running agent and
dockerd; the median is reported.
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import statistics
import subprocess
import time
import uuid

from bench.common import figure, spread
from docker_cilium.defaults import API_SOCKET

DOCKER = "/usr/bin/docker"
MIN_ALLOCATED = 256


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=5)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.path)


def sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, check=check)


def endpoint(api: str, container: str) -> dict | None:
    conn = UnixHTTPConnection(api)
    try:
        conn.request("GET", f"/v1/endpoint/container-id:{container}")
        resp = conn.getresponse()
        body = resp.read()
        return json.loads(body) if resp.status == 200 else None
    finally:
        conn.close()


def one_run(api: str, net: str, timeout: float = 30) -> float:
    """Seconds from `docker run -d` returning until the real identity is enforced."""
    name = f"bench-init-{uuid.uuid4().hex[:8]}"
    cid = sh(DOCKER, "run", "-d", "--name", name, "--net", net, "-l", "app=bench-init",
             "busybox", "sleep", "600").stdout.strip()
    t0 = time.perf_counter()
    try:
        while time.perf_counter() - t0 < timeout:
            ep = endpoint(api, cid)
            if ep and ep["state"] == "ready" and ep["identity"]["id"] >= MIN_ALLOCATED:
                return time.perf_counter() - t0
            time.sleep(0.001)
        raise SystemExit(f"{name}: no identity after {timeout} s")
    finally:
        sh(DOCKER, "rm", "-f", cid, check=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("-n", type=int, default=10, help="runs")
    ap.add_argument("-H", "--host", default=API_SOCKET, help="the agent's API socket")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    net = "bench-init"
    sh(DOCKER, "network", "rm", net, check=False)
    sh(DOCKER, "network", "create", "--driver", "cilium", "--ipam-driver", "cilium", net)
    try:
        one_run(args.host, net)  # warm-up
        runs = [one_run(args.host, net) for _ in range(args.n)]
    finally:
        sh(DOCKER, "network", "rm", net, check=False)
    res = {"runs": args.n, "init_window_median_s": round(statistics.median(runs), 4),
           "init_window_min_max_s": [round(min(runs), 4), round(max(runs), 4)],
           "figures": [figure("reserved:init window after docker run -d", statistics.median(runs), "s",
                              rounds=runs, absolute=spread(runs, "s", 3))]}
    print(json.dumps(res, indent=2) if args.json else
          f"reserved:init window after `docker run -d` returns, median of {args.n}: "
          f"{res['init_window_median_s']} s (min {res['init_window_min_max_s'][0]}, "
          f"max {res['init_window_min_max_s'][1]})")


if __name__ == "__main__":
    main()
