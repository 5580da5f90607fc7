"""L7 proxy vs L4-only: HTTP requests/s and latency, container to container.

A client and a server container on a cilium network; the server runs
``bench/httpd.c`` (one thread, epoll, keep-alive: fast enough that the path
in front of it is what gets measured) in its network namespace, the client
runs ``wrk`` in its own. Each round measures the same flow under an L4-only
policy (ingress from the client's label on port 80) and under an L7 policy
allowing ``GET`` on the same port (the connections go through the agent's
proxy), interleaved so that the ratio compares like with like, in two
shapes: keep-alive (``--connections`` connections, many requests each) and
one request per connection (``Connection: close``).
Needs a running agent (its CLI on PATH or --cilium) and dockerd.

    python -m bench.l7 [--rounds 3] [--seconds 5] [--connections 32]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from bench.common import figure, ratios, spread
from bench.throughput import DOCKER, ip_of, pid, sh

HERE = Path(__file__).parent
PORT = 80

L4 = [{"labels": [{"key": "name", "value": "bench-l7"}],
       "endpointSelector": {"matchLabels": {"bench": "l7-server"}},
       "ingress": [{"fromEndpoints": [{"matchLabels": {"bench": "l7-client"}}],
                    "toPorts": [{"ports": [{"port": str(PORT), "protocol": "TCP"}]}]}]}]
L7 = [{**L4[0], "ingress": [{**L4[0]["ingress"][0],
                             "toPorts": [{"ports": [{"port": str(PORT), "protocol": "TCP"}],
                                          "rules": {"http": [{"method": "GET", "path": "/.*"}]}}]}]}]

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    assert m, text
    return float(m.group(1)) * _UNITS[m.group(2)]


def wrk(client_ns: list[str], url: str, seconds: int, connections: int, close: bool) -> dict:
    extra = ["-H", "Connection: close"] if close else []
    out = sh(*client_ns, "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", *extra, url,
             timeout=seconds + 60).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    lat = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", out, re.M))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: (.*)", out)
    return {"rps": rps, "p50_ms": _ms(lat["50"]), "p99_ms": _ms(lat["99"]),
            "errors": errors.group(0) if errors else None}


def set_policy(cilium: str, doc: list, tmp: Path) -> None:
    sh(cilium, "policy", "delete", "name=bench-l7", check=False)
    path = tmp / "policy.json"
    path.write_text(json.dumps(doc))
    sh(cilium, "policy", "import", str(path))
    time.sleep(0.3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--cilium", default="cilium", help="path of the cilium CLI")
    args = ap.parse_args()
    net, srv, cli = "bench-l7-cilium", "bench-l7-srv", "bench-l7-cli"
    tmp = Path(tempfile.mkdtemp(prefix="bench-l7-"))
    server = None
    try:
        httpd = tmp / "httpd"
        sh("clang", "-O2", "-o", str(httpd), str(HERE / "httpd.c"))
        sh(DOCKER, "rm", "-f", srv, cli, check=False)
        sh(DOCKER, "network", "rm", net, check=False)
        sh(DOCKER, "network", "create", "--driver", "cilium", "--ipam-driver", "cilium", net)
        sh(DOCKER, "run", "-d", "--name", srv, "--net", net, "-l", "bench=l7-server", "busybox", "sleep", "3600")
        sh(DOCKER, "run", "-d", "--name", cli, "--net", net, "-l", "bench=l7-client", "busybox", "sleep", "3600")
        server = subprocess.Popen(["nsenter", "-t", pid(srv), "-n", str(httpd), str(PORT)],
                                  stdout=subprocess.PIPE, text=True)
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        cli_ns = ["nsenter", "-t", pid(cli), "-n"]
        # One request per connection at thousands per second: an HTTP client
        # closes first (after a "connection: close" answer), so its ports sit
        # in TIME_WAIT; let it reuse them, as load generators are set up to.
        sh(*cli_ns, "sysctl", "-qw", "net.ipv4.tcp_tw_reuse=1", "net.ipv4.ip_local_port_range=1024 65000")
        url = f"http://{ip_of(srv, net)}:{PORT}/index.html"
        time.sleep(2)  # labels -> identities
        shapes = {"keepalive": False, "close": True}
        res: dict[str, dict[str, list[dict]]] = {s: {"l4": [], "l7": []} for s in shapes}
        for _ in range(args.rounds):
            for mode, doc in (("l4", L4), ("l7", L7)):
                set_policy(args.cilium, doc, tmp)
                for shape, close in shapes.items():
                    res[shape][mode].append(wrk(cli_ns, url, args.seconds, args.connections, close))
        out: dict[str, dict] = {}
        for shape, modes in res.items():
            med = {m: {k: statistics.median(r[k] for r in runs) for k in ("rps", "p50_ms", "p99_ms")}
                   for m, runs in modes.items()}
            out[shape] = {
                "median": {m: {k: round(v, 3) for k, v in d.items()} for m, d in med.items()},
                "rps_min_max": {m: [round(min(r["rps"] for r in runs)), round(max(r["rps"] for r in runs))]
                                for m, runs in modes.items()},
                "rps_all": {m: [round(r["rps"]) for r in runs] for m, runs in modes.items()},
                "errors": {m: [r["errors"] for r in runs if r["errors"]] for m, runs in modes.items()},
                "ratio_rps_l7_over_l4": round(med["l7"]["rps"] / med["l4"]["rps"], 3),
            }
        rps = {s: {m: [r["rps"] for r in runs] for m, runs in modes.items()} for s, modes in res.items()}
        out["figures"] = [figure(f"HTTP req/s ({shape}), L7 proxy / L4 only", out[shape]["ratio_rps_l7_over_l4"],
                                 "x", baseline="L4 only", rounds=ratios(rps[shape]["l7"], rps[shape]["l4"]),
                                 absolute=f"L7 {spread(rps[shape]['l7'], 'req/s', 0)}, "
                                          f"L4 {spread(rps[shape]['l4'], '', 0)}")
                          for shape in shapes]
        print(json.dumps({"connections": args.connections, "seconds": args.seconds, "rounds": args.rounds,
                          **out}, indent=2))
    finally:
        if server is not None:
            server.kill()
            server.wait()
        sh(args.cilium, "policy", "delete", "name=bench-l7", check=False)
        sh(DOCKER, "rm", "-f", srv, cli, check=False)
        sh(DOCKER, "network", "rm", net, check=False)


if __name__ == "__main__":
    main()
