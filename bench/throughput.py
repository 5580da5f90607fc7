"""TCP throughput: cilium (policy enforced) vs Docker's bridge vs a bare veth pair.

All three run in one invocation and are interleaved round by round, so the
ratios compare like with like on a noisy machine. iperf3 is the host's binary
run inside each container's network namespace (nsenter), so the containers
need nothing but a shell. Needs a running agent and dockerd.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import tempfile
import time

from bench.common import figure, ratios, round_args, spread

DOCKER = "/usr/bin/docker"
PORT = 5201
LABELS = ("role=iperf-server", "role=iperf-client")
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
    """A server and a client namespace plus the address the client dials;
    the servers started in it (``serve``) end with it."""

    def __init__(self, name: str, server_ns: list[str], client_ns: list[str], server_ip: str) -> None:
        self.name, self.server_ns, self.client_ns, self.server_ip = name, server_ns, client_ns, server_ip
        self.servers: list[subprocess.Popen] = []

    def serve(self, *cmd: str) -> subprocess.Popen:
        """Start ``cmd`` in the server's namespace (its stdout a pipe)."""
        proc = subprocess.Popen([*self.server_ns, *cmd], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                text=True)
        self.servers.append(proc)
        return proc

    def mtu(self) -> int:
        """The client's interface MTU (cilium's endpoints take the uplink's, the
        bridge and the bare veth have 1500): it sets the segment size."""
        out = sh(*self.client_ns, "ip", "-o", "link", "show").stdout
        return max(int(m) for m in re.findall(r" mtu (\d+) ", out) if int(m) < 65536)

    def close(self) -> None:
        for proc in self.servers:
            proc.kill()
            proc.wait()


def iperf_server(pair: Pair) -> Pair:
    pair.serve("iperf3", "-s", "-p", str(PORT))
    time.sleep(0.5)
    return pair


def rotated(items: list, start: int) -> list:
    """The pairs in round ``start``'s order: each round begins one further
    along, so no pair always runs first or right after the same other."""
    k = start % len(items)
    return items[k:] + items[:k]


def pair_figure(name: str, results: dict[str, list[float]], subject: str, baseline: str, unit: str,
                goal: str | None = None, kind: str | None = None, digits: int = 2) -> dict:
    """A CONTRACT15 ratio figure of ``subject`` over ``baseline``: the median of
    the per-round ratios (rounds are interleaved, so each ratio compares runs
    made moments apart), both sides' medians and ranges beside it. ``kind``:
    the report's baseline kind when it is not ``baseline`` itself."""
    per_round = ratios(results[subject], results[baseline])
    return figure(name, statistics.median(per_round), "x", goal=goal, baseline=kind or baseline,
                  rounds=per_round,
                  absolute=(f"{subject} {spread(results[subject], unit, digits)}, {baseline} "
                            f"{spread(results[baseline], unit, digits)} (median of per-round ratios)"))


def docker_pair(net: str, tag: str, labels: tuple[str, str] | None) -> tuple[Pair, list[str]]:
    """Server and client containers on ``net``, labelled (server, client) when given."""
    srv, cli = f"bench-{tag}-srv", f"bench-{tag}-cli"
    for c in (srv, cli):
        sh(DOCKER, "rm", "-f", c, check=False)
    lab_s = ["-l", labels[0]] if labels else []
    lab_c = ["-l", labels[1]] if labels else []
    sh(DOCKER, "run", "-d", "--name", srv, "--net", net, *lab_s, "busybox", "sleep", "3600")
    sh(DOCKER, "run", "-d", "--name", cli, "--net", net, *lab_c, "busybox", "sleep", "3600")
    pair = Pair(tag, ["nsenter", "-t", pid(srv), "-n"], ["nsenter", "-t", pid(cli), "-n"], ip_of(srv, net))
    return pair, [srv, cli]


# What dockerd puts in every container's namespace on a user-defined network
# (cilium's and the bridge's alike) for its embedded DNS server: NAT rules,
# so netfilter's conntrack and NAT hooks see every packet in both containers.
DOCKER_DNS_NAT = (("OUTPUT", "-d", "127.0.0.11/32", "-p", "udp", "--dport", "53", "-j", "DNAT",
                   "--to-destination", "127.0.0.11:53053"),
                  ("POSTROUTING", "-s", "127.0.0.11/32", "-p", "udp", "--sport", "53053", "-j", "SNAT",
                   "--to-source", ":53"))


def veth_pair(docker_nat: bool = False) -> Pair:
    """The bare limit: two namespaces joined by one veth, no routing, no BPF.
    ``docker_nat``: with the rules dockerd adds inside each container's
    namespace (DOCKER_DNS_NAT): what Docker itself costs on both ends, apart
    from the path between them (pair "veth+nat", its own namespaces)."""
    tag, octet = ("n", 78) if docker_nat else ("v", 77)
    srv, cli, dev0, dev1 = f"bench-{tag}s", f"bench-{tag}c", f"bench-{tag}0", f"bench-{tag}1"
    for ns in (srv, cli):
        sh("ip", "netns", "del", ns, check=False)
        sh("ip", "netns", "add", ns)
    sh("ip", "link", "add", dev0, "netns", srv, "type", "veth", "peer", "name", dev1, "netns", cli)
    sh("ip", "-n", srv, "addr", "add", f"198.18.{octet}.1/30", "dev", dev0)
    sh("ip", "-n", cli, "addr", "add", f"198.18.{octet}.2/30", "dev", dev1)
    for ns, dev in ((srv, dev0), (cli, dev1)):
        sh("ip", "-n", ns, "link", "set", dev, "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        for rule in DOCKER_DNS_NAT if docker_nat else ():
            sh("ip", "netns", "exec", ns, "iptables", "-t", "nat", "-A", *rule)
    return Pair("veth+nat" if docker_nat else "veth", ["ip", "netns", "exec", srv], ["ip", "netns", "exec", cli],
                f"198.18.{octet}.1")


def remove_veth_pairs() -> None:
    """The namespaces of both veth pairs (their links and rules go with them)."""
    for ns in ("bench-vs", "bench-vc", "bench-ns", "bench-nc"):
        sh("ip", "netns", "del", ns, check=False)


def tear_down(pairs: list[Pair], containers: list[str], nets: list[str], cilium: str, policy_label: str) -> None:
    """What a pairs benchmark made: pairs, containers, networks, bare veths, its policy."""
    for pair in pairs:
        pair.close()
    if containers:
        sh(DOCKER, "rm", "-f", *containers, check=False)
    for net in nets:
        sh(DOCKER, "network", "rm", net, check=False)
    remove_veth_pairs()
    sh(cilium, "policy", "delete", policy_label, check=False)


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
        p, cs = docker_pair(nets["cilium"], "cilium", labels=LABELS)
        pairs.append(iperf_server(p)), containers.extend(cs)
        p, cs = docker_pair(nets["bridge"], "bridge", labels=None)
        pairs.append(iperf_server(p)), containers.extend(cs)
        pairs.append(iperf_server(veth_pair()))
        rev = sh(args.cilium, "policy", "import", policy_file.name).stdout.split()[-1]
        time.sleep(1.5)  # container labels arrive through Docker's events
        results: dict[str, list[float]] = {p.name: [] for p in pairs}
        for r in range(args.rounds):
            for p in rotated(pairs, r):
                results[p.name].append(iperf(p.client_ns, p.server_ip, args.seconds))
        med = {k: statistics.median(v) for k, v in results.items()}
        enforced = [e for e in json.loads(sh(args.cilium, "endpoint", "list", "-o", "json").stdout)
                    if e["policy"]["ingress-enforced"]]
        print(json.dumps({
            "policy_revision": int(rev),
            "endpoints_with_ingress_policy": len(enforced),
            "mtu": {p.name: p.mtu() for p in pairs},
            "gbit_s_median": {k: round(v, 2) for k, v in med.items()},
            "gbit_s_all": {k: [round(x, 2) for x in v] for k, v in results.items()},
            "ratio_cilium_over_bridge": round(med["cilium"] / med["bridge"], 3),
            "ratio_cilium_over_veth": round(med["cilium"] / med["veth"], 3),
            "ratio_bridge_over_veth": round(med["bridge"] / med["veth"], 3),
            "figures": [
                pair_figure("TCP throughput, cilium (L4 policy) / bare veth", results, "cilium", "veth",
                            "Gbit/s", goal=">= 0.95x veth"),
                pair_figure("TCP throughput, cilium (L4 policy) / bridge", results, "cilium", "bridge", "Gbit/s"),
                pair_figure("TCP throughput, bridge / bare veth", results, "bridge", "veth", "Gbit/s"),
            ],
        }, indent=2))
    finally:
        tear_down(pairs, containers, list(nets.values()), args.cilium, "name=bench-iperf")
        os.unlink(policy_file.name)


if __name__ == "__main__":
    main()
