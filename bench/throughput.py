"""TCP throughput: cilium (policy enforced) vs Docker's bridge vs a bare veth pair.

All three run in one invocation and are interleaved round by round, so the
ratios compare like with like on a noisy machine. iperf3 is the host's binary
run inside each container's network namespace (nsenter), so the containers
need nothing but a shell. Needs a running agent and dockerd.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import tempfile
import time

from bench.common import figure, ratios, round_args, spread

DOCKER = "/usr/bin/docker"
PORT = 5201
POLICY = [{
    "labels": [{"key": "name", "value": "bench-iperf"}],
    "endpointSelector": {"matchLabels": {"role": "iperf-server"}},
    "ingress": [{"fromEndpoints": [{"matchLabels": {"role": "iperf-client"}}],
                 "toPorts": [{"ports": [{"port": str(PORT), "protocol": "TCP"}]}]}],
}]


def sh(*cmd: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=timeout)


def pid(container: str) -> str:
    return sh(DOCKER, "inspect", "-f", "{{.State.Pid}}", container).stdout.strip()


def ip_of(container: str, net: str) -> str:
    return sh(DOCKER, "inspect", "-f", f'{{{{(index .NetworkSettings.Networks "{net}").IPAddress}}}}',
              container).stdout.strip()


def iperf(client_ns: list[str], server_ip: str, seconds: int) -> float:
    out = sh(*client_ns, "iperf3", "-c", server_ip, "-p", str(PORT), "-t", str(seconds), "-J",
             timeout=seconds + 30).stdout
    return json.loads(out)["end"]["sum_received"]["bits_per_second"] / 1e9


class Pair:
    """A server and a client namespace plus the address the client dials."""

    def __init__(self, name: str, server_ns: list[str], client_ns: list[str], server_ip: str) -> None:
        self.name, self.server_ns, self.client_ns, self.server_ip = name, server_ns, client_ns, server_ip
        self.server = subprocess.Popen([*server_ns, "iperf3", "-s", "-p", str(PORT)],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)

    def close(self) -> None:
        self.server.kill()
        self.server.wait()


def docker_pair(net: str, tag: str, labels: bool) -> tuple[Pair, list[str]]:
    srv, cli = f"bench-{tag}-srv", f"bench-{tag}-cli"
    for c in (srv, cli):
        sh(DOCKER, "rm", "-f", c, check=False)
    lab_s = ["-l", "role=iperf-server"] if labels else []
    lab_c = ["-l", "role=iperf-client"] if labels else []
    sh(DOCKER, "run", "-d", "--name", srv, "--net", net, *lab_s, "busybox", "sleep", "3600")
    sh(DOCKER, "run", "-d", "--name", cli, "--net", net, *lab_c, "busybox", "sleep", "3600")
    pair = Pair(tag, ["nsenter", "-t", pid(srv), "-n"], ["nsenter", "-t", pid(cli), "-n"], ip_of(srv, net))
    return pair, [srv, cli]


def veth_pair() -> Pair:
    """The bare limit: two namespaces joined by one veth, no routing, no BPF."""
    for ns in ("bench-vs", "bench-vc"):
        sh("ip", "netns", "del", ns, check=False)
        sh("ip", "netns", "add", ns)
    sh("ip", "link", "add", "bench-v0", "netns", "bench-vs", "type", "veth", "peer", "name", "bench-v1",
       "netns", "bench-vc")
    sh("ip", "-n", "bench-vs", "addr", "add", "198.18.77.1/30", "dev", "bench-v0")
    sh("ip", "-n", "bench-vc", "addr", "add", "198.18.77.2/30", "dev", "bench-v1")
    for ns, dev in (("bench-vs", "bench-v0"), ("bench-vc", "bench-v1")):
        sh("ip", "-n", ns, "link", "set", dev, "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")
    return Pair("veth", ["ip", "netns", "exec", "bench-vs"], ["ip", "netns", "exec", "bench-vc"], "198.18.77.1")


def main() -> None:
    args = round_args(__doc__, cilium=True)
    nets = {"cilium": "bench-tp-cilium", "bridge": "bench-tp-bridge"}
    containers: list[str] = []
    pairs: list[Pair] = []
    policy_file = tempfile.NamedTemporaryFile("w", suffix=".json", delete=False)
    json.dump(POLICY, policy_file)
    policy_file.close()
    try:
        for net in nets.values():
            sh(DOCKER, "network", "rm", net, check=False)
        sh(DOCKER, "network", "create", "--ipv6", "--subnet", "::1/112", "--driver", "cilium",
           "--ipam-driver", "cilium", nets["cilium"])
        sh(DOCKER, "network", "create", "--ipv6", "--subnet", "fd00:bed::/64", nets["bridge"])
        p, cs = docker_pair(nets["cilium"], "cilium", labels=True)
        pairs.append(p), containers.extend(cs)
        p, cs = docker_pair(nets["bridge"], "bridge", labels=False)
        pairs.append(p), containers.extend(cs)
        pairs.append(veth_pair())
        rev = sh(args.cilium, "policy", "import", policy_file.name).stdout.split()[-1]
        time.sleep(1.5)  # container labels arrive through Docker's events
        results: dict[str, list[float]] = {p.name: [] for p in pairs}
        for _ in range(args.rounds):
            for p in pairs:
                results[p.name].append(iperf(p.client_ns, p.server_ip, args.seconds))
        med = {k: statistics.median(v) for k, v in results.items()}
        tcp = {k: f"{k} {spread(v, 'Gbit/s')}" for k, v in results.items()}
        enforced = [e for e in json.loads(sh(args.cilium, "endpoint", "list", "-o", "json").stdout)
                    if e["policy"]["ingress-enforced"]]
        print(json.dumps({
            "policy_revision": int(rev),
            "endpoints_with_ingress_policy": len(enforced),
            "gbit_s_median": {k: round(v, 2) for k, v in med.items()},
            "gbit_s_all": {k: [round(x, 2) for x in v] for k, v in results.items()},
            "ratio_cilium_over_bridge": round(med["cilium"] / med["bridge"], 3),
            "ratio_cilium_over_veth": round(med["cilium"] / med["veth"], 3),
            "ratio_bridge_over_veth": round(med["bridge"] / med["veth"], 3),
            "figures": [
                figure("TCP throughput, cilium (L4 policy) / bare veth", med["cilium"] / med["veth"], "x",
                       goal=">= 0.95x veth", baseline="veth", rounds=ratios(results["cilium"], results["veth"]),
                       absolute=f"{tcp['cilium']}, {tcp['veth']}"),
                figure("TCP throughput, cilium (L4 policy) / bridge", med["cilium"] / med["bridge"], "x",
                       baseline="bridge", rounds=ratios(results["cilium"], results["bridge"]),
                       absolute=f"{tcp['cilium']}, {tcp['bridge']}"),
            ],
        }, indent=2))
    finally:
        for p in pairs:
            p.close()
        if containers:
            sh(DOCKER, "rm", "-f", *containers, check=False)
        for net in nets.values():
            sh(DOCKER, "network", "rm", net, check=False)
        for ns in ("bench-vs", "bench-vc"):
            sh("ip", "netns", "del", ns, check=False)
        sh(args.cilium, "policy", "delete", "name=bench-iperf", check=False)
        os.unlink(policy_file.name)


if __name__ == "__main__":
    main()
