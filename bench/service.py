"""Service VIP vs direct: TCP throughput and connection rate, container to container.

One client and one server container on a cilium network; the server is the
only backend of a service (``cilium service update``). Each round measures the
same client reaching the server through the VIP and through the server's own
address, interleaved, so the ratio compares like with like on a noisy
machine. Throughput: iperf3 (the host's binary in the containers' network
namespaces). Connection rate: a stdlib client opening, using (one byte each
way) and closing TCP connections one after the other (--connections per
round and target: few enough that no source port is reused while in
TIME_WAIT).
Needs a running agent (CILIUM_HOST selects its socket) and dockerd.

    python -m bench.service [--rounds 3] [--seconds 5] [--connections 3000]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

from bench.common import figure, ratios, spread
from bench.throughput import DOCKER, PORT, iperf, ip_of, pid, sh

VIP = "10.97.251.10"
SVC_ID = 4242
CONN_PORT = 5300

SERVER = f"""
import socket, threading
ls = socket.socket(); ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind(("0.0.0.0", {CONN_PORT})); ls.listen(1024)
print("ready", flush=True)
while True:
    c, _ = ls.accept()
    try:
        if c.recv(1): c.sendall(b"y")
        c.recv(1)  # the client closes first: TIME_WAIT stays on its side, per destination
    finally:
        c.close()
"""

CLIENT = """
import socket, sys, time
dst, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
t0 = time.monotonic()
for _ in range(n):
    s = socket.create_connection((dst, port), timeout=2)
    s.sendall(b"x"); assert s.recv(1) == b"y"
    s.close()
print(n / (time.monotonic() - t0))
"""


def conn_rate(client_ns: list[str], dst: str, count: int) -> float:
    return float(sh(*client_ns, sys.executable, "-c", CLIENT, dst, str(CONN_PORT), str(count),
                    timeout=120).stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--connections", type=int, default=3000, help="connections per round and target")
    ap.add_argument("--cilium", default="cilium", help="path of the cilium CLI")
    args = ap.parse_args()
    net, srv, cli = "bench-svc-cilium", "bench-svc-srv", "bench-svc-cli"
    procs: list[subprocess.Popen] = []
    try:
        sh(DOCKER, "rm", "-f", srv, cli, check=False)
        sh(DOCKER, "network", "rm", net, check=False)
        sh(DOCKER, "network", "create", "--driver", "cilium", "--ipam-driver", "cilium", net)
        for c in (srv, cli):
            sh(DOCKER, "run", "-d", "--name", c, "--net", net, "busybox", "sleep", "3600")
        srv_ns, cli_ns = ["nsenter", "-t", pid(srv), "-n"], ["nsenter", "-t", pid(cli), "-n"]
        direct = ip_of(srv, net)
        procs.append(subprocess.Popen([*srv_ns, "iperf3", "-s", "-p", str(PORT)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        conn_srv = subprocess.Popen([*srv_ns, sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True)
        procs.append(conn_srv)
        assert conn_srv.stdout is not None and conn_srv.stdout.readline().strip() == "ready"
        for port in (PORT, CONN_PORT):
            sh(args.cilium, "service", "update", "--id", str(SVC_ID + port - PORT), "--frontend", f"{VIP}:{port}",
               "--backends", f"{direct}:{port}")
        time.sleep(0.5)
        targets = {"vip": VIP, "direct": direct}
        gbit: dict[str, list[float]] = {k: [] for k in targets}
        rate: dict[str, list[float]] = {k: [] for k in targets}
        for _ in range(args.rounds):
            for name, dst in targets.items():
                gbit[name].append(iperf(cli_ns, dst, args.seconds))
                rate[name].append(conn_rate(cli_ns, dst, args.connections))
        med_g = {k: statistics.median(v) for k, v in gbit.items()}
        med_r = {k: statistics.median(v) for k, v in rate.items()}
        print(json.dumps({
            "gbit_s_median": {k: round(v, 2) for k, v in med_g.items()},
            "gbit_s_all": {k: [round(x, 2) for x in v] for k, v in gbit.items()},
            "connections_per_s_median": {k: round(v) for k, v in med_r.items()},
            "connections_per_s_all": {k: [round(x) for x in v] for k, v in rate.items()},
            "ratio_throughput_vip_over_direct": round(med_g["vip"] / med_g["direct"], 3),
            "ratio_conn_rate_vip_over_direct": round(med_r["vip"] / med_r["direct"], 3),
            "figures": [
                figure("service VIP TCP / direct (container to container)", med_g["vip"] / med_g["direct"], "x",
                       baseline="direct", rounds=ratios(gbit["vip"], gbit["direct"]),
                       absolute=f"vip {spread(gbit['vip'], 'Gbit/s')}, direct {spread(gbit['direct'])}"),
                figure("service VIP conn/s / direct", med_r["vip"] / med_r["direct"], "x", baseline="direct",
                       rounds=ratios(rate["vip"], rate["direct"]),
                       absolute=f"vip {spread(rate['vip'], 'conn/s', 0)}, direct {spread(rate['direct'], '', 0)}"),
            ],
        }, indent=2))
    finally:
        for p in procs:
            p.kill()
            p.wait()
        for port in (PORT, CONN_PORT):
            sh(args.cilium, "service", "delete", str(SVC_ID + port - PORT), check=False)
        sh(DOCKER, "rm", "-f", srv, cli, check=False)
        sh(DOCKER, "network", "rm", net, check=False)


if __name__ == "__main__":
    main()
