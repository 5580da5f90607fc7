"""Request/response and connection rate: cilium (L4 policy) vs Docker's bridge vs a bare veth pair.

netperf's TCP_RR and TCP_CRR with what is packaged here: ``wrk`` against
``bench/httpd.c`` (one thread, epoll: fast enough that the path between the
two is what gets measured), in two shapes: keep-alive (each connection sends
its next request when the answer arrives: request/response rate) and
``Connection: close`` (a new connection per request: connection rate). The
three pairs are those of bench/throughput.py: two containers on a cilium
network with an ingress policy allowing the client's label on the port, two
on a dual-stack bridge network, and two namespaces joined by one veth; plus
that veth pair with the NAT rules dockerd puts in every container's namespace
on a user-defined network (its embedded DNS), which the cilium and bridge
pairs carry as well, to tell Docker's cost at both ends from the path's. Every
round runs each shape on each pair in turn (interleaved), so the ratios
compare like with like on a noisy machine (each round starts one pair further
along). Needs a running agent and dockerd.

    python -m bench.rr [--rounds 5] [--seconds 3] [--connections 1] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import tempfile
import time
from pathlib import Path

from bench.throughput import (DOCKER, Pair, docker_pair, pair_figure, rotated, sh, tear_down,
                              veth_pair)

HERE = Path(__file__).parent
PORT = 8080
LABELS = ("role=rr-server", "role=rr-client")
POLICY = [{
    "labels": [{"key": "name", "value": "bench-rr"}],
    "endpointSelector": {"matchLabels": {"role": "rr-server"}},
    "ingress": [{"fromEndpoints": [{"matchLabels": {"role": "rr-client"}}],
                 "toPorts": [{"ports": [{"port": str(PORT), "protocol": "TCP"}]}]}],
}]
SHAPES = {"keepalive": False, "close": True}


def wrk(pair: Pair, seconds: int, connections: int, close: bool) -> float:
    """Requests/s of one wrk run from the pair's client to its server; a run
    with socket errors or non-2xx answers is refused, not averaged in."""
    extra = ["-H", "Connection: close"] if close else []
    url = f"http://{pair.server_ip}:{PORT}/"
    out = sh(*pair.client_ns, "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", *extra, url,
             timeout=seconds + 60).stdout
    bad = re.search(r"Non-2xx or 3xx responses: \d+|Socket errors: .*", out)
    if bad:
        raise SystemExit(f"wrk against {pair.name}: {bad.group(0)}")
    found = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not found:
        raise SystemExit(f"wrk against {pair.name} printed no rate:\n{out}")
    return float(found.group(1))


def start_httpd(pair: Pair, httpd: Path) -> None:
    proc = pair.serve(str(httpd), str(PORT))
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        raise SystemExit(f"httpd did not start in {pair.name}")
    # One request per connection at thousands per second: the client closes
    # first, so its ports sit in TIME_WAIT; let it reuse them, as load
    # generators are set up to.
    sh(*pair.client_ns, "sysctl", "-qw", "net.ipv4.tcp_tw_reuse=1", "net.ipv4.ip_local_port_range=1024 65000")


def figures(res: dict[str, dict[str, list[float]]]) -> list[dict]:
    names = {"keepalive": "request/response rate (keep-alive)",
             "close": "connection rate (one request per connection)"}
    out = []
    for shape, label in names.items():
        for baseline in ("veth", "bridge"):
            out.append(pair_figure(f"{label}, cilium (L4 policy) / {'bare veth' if baseline == 'veth' else baseline}",
                                   res[shape], "cilium", baseline, "req/s", digits=0))
        out.append(pair_figure(f"{label}, bridge / bare veth", res[shape], "bridge", "veth", "req/s", digits=0))
        out.append(pair_figure(f"{label}, cilium (L4 policy) / veth with Docker's in-container NAT rules",
                                res[shape], "cilium", "veth+nat", "req/s", digits=0, kind="veth"))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=int, default=3)
    ap.add_argument("--connections", type=int, default=1,
                    help="wrk connections (1: one request in flight, as netperf's TCP_RR/TCP_CRR)")
    ap.add_argument("--cilium", default="cilium", help="path of the cilium CLI")
    ap.add_argument("--json", action="store_true", help="accepted for `make bench`: the output is always JSON")
    args = ap.parse_args()
    nets = {"cilium": "bench-rr-cilium", "bridge": "bench-rr-bridge"}
    containers: list[str] = []
    pairs: list[Pair] = []
    tmp = Path(tempfile.mkdtemp(prefix="bench-rr-"))
    policy = tmp / "policy.json"
    policy.write_text(json.dumps(POLICY))
    try:
        httpd = tmp / "httpd"
        sh("clang", "-O2", "-o", str(httpd), str(HERE / "httpd.c"))
        for net in nets.values():
            sh(DOCKER, "network", "rm", net, check=False)
        sh(DOCKER, "network", "create", "--ipv6", "--subnet", "::1/112", "--driver", "cilium",
           "--ipam-driver", "cilium", nets["cilium"])
        sh(DOCKER, "network", "create", "--ipv6", "--subnet", "fd00:bee::/64", nets["bridge"])
        for name, labels in (("cilium", LABELS), ("bridge", None)):
            pair, names = docker_pair(nets[name], f"rr-{name}", labels=labels)
            pair.name = name
            pairs.append(pair), containers.extend(names)
        pairs += [veth_pair(), veth_pair(docker_nat=True)]
        for pair in pairs:
            start_httpd(pair, httpd)
        rev = sh(args.cilium, "policy", "import", str(policy)).stdout.split()[-1]
        time.sleep(1.5)  # container labels arrive through Docker's events
        res = {shape: {p.name: [] for p in pairs} for shape in SHAPES}
        for r in range(args.rounds):
            for shape, close in SHAPES.items():
                for pair in rotated(pairs, r):
                    res[shape][pair.name].append(wrk(pair, args.seconds, args.connections, close))
        enforced = [e for e in json.loads(sh(args.cilium, "endpoint", "list", "-o", "json").stdout)
                    if e["policy"]["ingress-enforced"]]
        print(json.dumps({
            "policy_revision": int(rev),
            "endpoints_with_ingress_policy": len(enforced),
            "connections": args.connections, "seconds": args.seconds, "rounds": args.rounds,
            "req_s_median": {s: {k: round(statistics.median(v)) for k, v in r.items()} for s, r in res.items()},
            "req_s_all": {s: {k: [round(x) for x in v] for k, v in r.items()} for s, r in res.items()},
            "figures": figures(res),
        }, indent=2))
    finally:
        tear_down(pairs, containers, list(nets.values()), args.cilium, "name=bench-rr")
        for path in (policy, tmp / "httpd"):
            if path.exists():
                os.unlink(path)
        os.rmdir(tmp)


if __name__ == "__main__":
    main()
