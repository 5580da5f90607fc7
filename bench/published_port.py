"""Published ports: cilium-net `-p` (policy enforced) vs Docker's bridge with the same `-p`.

An "outside machine" (a network namespace on a veth with its own /30) dials
the host's address on that link, as a client on the LAN dials the uplink's:
TCP throughput (iperf3, the host's binary inside the containers' namespaces)
and the rate of sequential TCP connections (connect + close against an
accept loop with a deep backlog, so the server's speed is not what is
measured) through each published port, interleaved round by round. The cilium
container has an ingress policy allowing `world` on those ports, so the
figure includes enforcement. Needs a running agent and dockerd.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from bench.common import figure, ratios, round_args, spread
from bench.throughput import DOCKER, pid, sh

NS, HOST_IF, NS_IF = "bench-pp-out", "bench-pp0", "bench-pp1"
HOST_IP, NS_IP = "198.18.78.1", "198.18.78.2"  # a /30 of the benchmarking range (RFC 2544)
IPERF_PORT, ACCEPT_PORT = 5201, 8080
PUBLISHED = {"cilium": (15201, 18181), "bridge": (15202, 18182)}
POLICY = [{
    "labels": [{"key": "name", "value": "bench-published-port"}],
    "endpointSelector": {"matchLabels": {"role": "bench-published"}},
    "ingress": [{"fromEntities": ["world"],
                 "toPorts": [{"ports": [{"port": str(IPERF_PORT), "protocol": "TCP"},
                                        {"port": str(ACCEPT_PORT), "protocol": "TCP"}]}]}],
}]
CONNECT_LOOP = """
import socket, sys, time
ip, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
n, end = 0, time.monotonic() + seconds
while time.monotonic() < end:
    s = socket.create_connection((ip, port), timeout=2)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x00")
    s.close()
    n += 1
print(n / seconds)
"""
ACCEPT_LOOP = """
import socket
s = socket.socket(socket.AF_INET6)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("::", %d))
s.listen(4096)
while True:
    s.accept()[0].close()
""" % ACCEPT_PORT


def outside_ns() -> list[str]:
    sh("ip", "netns", "del", NS, check=False)
    sh("ip", "link", "del", HOST_IF, check=False)
    sh("ip", "netns", "add", NS)
    sh("ip", "link", "add", HOST_IF, "type", "veth", "peer", "name", NS_IF, "netns", NS)
    sh("ip", "addr", "add", f"{HOST_IP}/30", "dev", HOST_IF)
    sh("ip", "link", "set", HOST_IF, "up")
    sh("ip", "-n", NS, "addr", "add", f"{NS_IP}/30", "dev", NS_IF)
    sh("ip", "-n", NS, "link", "set", NS_IF, "up")
    sh("ip", "-n", NS, "link", "set", "lo", "up")
    return ["ip", "netns", "exec", NS]


def iperf(client: list[str], port: int, seconds: int) -> float:
    out = sh(*client, "iperf3", "-c", HOST_IP, "-p", str(port), "-t", str(seconds), "-J",
             timeout=seconds + 30).stdout
    return json.loads(out)["end"]["sum_received"]["bits_per_second"] / 1e9


def connect_rate(client: list[str], port: int, seconds: float) -> float:
    return float(sh(*client, sys.executable, "-c", CONNECT_LOOP, HOST_IP, str(port), str(seconds),
                    timeout=seconds + 30).stdout)


def main() -> None:
    args = round_args(__doc__, cilium=True)
    nets = {"cilium": "bench-pp-cilium", "bridge": "bench-pp-bridge"}
    servers: list[subprocess.Popen] = []
    policy_file = tempfile.NamedTemporaryFile("w", suffix=".json", delete=False)
    json.dump(POLICY, policy_file)
    policy_file.close()
    try:
        for kind, net in nets.items():
            sh(DOCKER, "rm", "-f", f"bench-pp-{kind}", check=False)
            sh(DOCKER, "network", "rm", net, check=False)
        sh(DOCKER, "network", "create", "--ipv6", "--subnet", "::1/112", "--driver", "cilium",
           "--ipam-driver", "cilium", nets["cilium"])
        sh(DOCKER, "network", "create", "--ipv6", "--subnet", "fd00:bee::/64", nets["bridge"])
        rev = sh(args.cilium, "policy", "import", policy_file.name).stdout.split()[-1]
        for kind, net in nets.items():
            tp, hp = PUBLISHED[kind]
            c = f"bench-pp-{kind}"
            sh(DOCKER, "run", "-d", "--name", c, "--net", net, "-l", "role=bench-published",
               "-p", f"{tp}:{IPERF_PORT}", "-p", f"{hp}:{ACCEPT_PORT}", "busybox", "sleep", "3600")
            for cmd in (["iperf3", "-s", "-p", str(IPERF_PORT)], [sys.executable, "-c", ACCEPT_LOOP]):
                servers.append(subprocess.Popen(["nsenter", "-t", pid(c), "-n", *cmd],
                                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        client = outside_ns()
        time.sleep(2)  # labels arrive through Docker's events; iperf3 servers start
        gbit: dict[str, list[float]] = {k: [] for k in nets}
        conns: dict[str, list[float]] = {k: [] for k in nets}
        for _ in range(args.rounds):
            for kind in nets:
                tp, hp = PUBLISHED[kind]
                gbit[kind].append(iperf(client, tp, args.seconds))
                conns[kind].append(connect_rate(client, hp, args.seconds))
        g = {k: statistics.median(v) for k, v in gbit.items()}
        c = {k: statistics.median(v) for k, v in conns.items()}
        print(json.dumps({
            "policy_revision": int(rev),
            "gbit_s_median": {k: round(v, 2) for k, v in g.items()},
            "gbit_s_all": {k: [round(x, 2) for x in v] for k, v in gbit.items()},
            "connections_per_s_median": {k: round(v) for k, v in c.items()},
            "connections_per_s_all": {k: [round(x) for x in v] for k, v in conns.items()},
            "ratio_throughput_cilium_over_bridge": round(g["cilium"] / g["bridge"], 3),
            "ratio_connections_cilium_over_bridge": round(c["cilium"] / c["bridge"], 3),
            "figures": [
                figure("published port TCP, cilium / bridge", g["cilium"] / g["bridge"], "x", baseline="bridge",
                       rounds=ratios(gbit["cilium"], gbit["bridge"]),
                       absolute=f"cilium {spread(gbit['cilium'], 'Gbit/s')}, bridge {spread(gbit['bridge'])}"),
                figure("published port conn/s, cilium / bridge", c["cilium"] / c["bridge"], "x", baseline="bridge",
                       rounds=ratios(conns["cilium"], conns["bridge"]),
                       absolute=f"cilium {spread(conns['cilium'], 'conn/s', 0)}, "
                                f"bridge {spread(conns['bridge'], '', 0)}"),
            ],
        }, indent=2))
    finally:
        for s in servers:
            s.kill()
            s.wait()
        for kind, net in nets.items():
            sh(DOCKER, "rm", "-f", f"bench-pp-{kind}", check=False)
            sh(DOCKER, "network", "rm", net, check=False)
        sh("ip", "netns", "del", NS, check=False)
        sh("ip", "link", "del", HOST_IF, check=False)
        sh(args.cilium, "policy", "delete", "name=bench-published-port", check=False)
        os.unlink(policy_file.name)


if __name__ == "__main__":
    main()
