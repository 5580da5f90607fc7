"""Several hosts (`make cluster`): cross-node TCP throughput through VXLAN
against the same two hosts' underlay, and how long a container started on
node2 takes to become reachable from a peer on node1.

    make cluster && .venv/bin/python -m bench.cluster     # the running cluster
    .venv/bin/python -m bench.cluster --up                # its own (N=2), removed afterwards

Throughput: iperf3 (in the node image) from node1 to node2, container to
container (busybox containers on cilium-net, iperf3 run from the node in
their network namespaces with nsenter, no policy) and node to node on the
underlay address (no encapsulation), interleaved round by round; medians
with min-max.

Propagation: a probe container on node1 whose egress policy allows only
`bench=prop-target` endpoints, and targets on node2 (each with a label of its
own, so a fresh identity) whose ingress allows only the probe: a target is
reachable (its httpd serves its /etc/hostname) once node2 has allocated its identity
in etcd and node1 has its address in the shared ipcache with that identity.
Timed from the container's State.StartedAt (node2's dockerd, the same
kernel clock) to the probe's first connection; for 1 container and for
--containers started at once (p50/max per container, until all are
reachable from the launch, and when the last one started: dockerd's share). The probe scans the first addresses of node2's
range (its IPAM hands out the next free address), as it cannot know them.

Prints a table, then writes the JSON to bench/results/cluster-<UTC>.json.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import statistics
import subprocess
import time
from datetime import datetime
from pathlib import Path

from bench.common import figure, ratios, spread

HERE = Path(__file__).resolve().parent
CLUSTER_SH = str(HERE.parent / "scripts" / "cluster.sh")
NET = "cilium-net"
PORT_VX, PORT_UL = 5201, 5202
POLICY = [
    {"labels": [{"key": "name", "value": "bench-prop"}],
     "endpointSelector": {"matchLabels": {"bench": "prop-probe"}},
     "egress": [{"toEndpoints": [{"matchLabels": {"bench": "prop-target"}}]}]},
    {"labels": [{"key": "name", "value": "bench-prop"}],
     "endpointSelector": {"matchLabels": {"bench": "prop-target"}},
     "ingress": [{"fromEndpoints": [{"matchLabels": {"bench": "prop-probe"}}]}]},
]
# Runs in the probe's netns on node1: tries every candidate address until
# `want` of them serve the target's page; prints {address: unix time of the
# first answer}. An HTTP 200 for /hostname is required, not only a connection:
# the machine's egress may answer TCP port 80 for an address it has no route
# to (a connection through the node's default route is not the tunnel).
PROBER = r"""
import json, select, socket, sys, time
cands, want, deadline = sys.argv[1].split(","), int(sys.argv[2]), time.time() + float(sys.argv[3])
seen, pending = {}, {}
def serves(s):
    try:
        s.setblocking(True); s.settimeout(0.5); s.sendall(b"GET /hostname HTTP/1.0\r\n\r\n")
        return b" 200 " in s.recv(4096).split(b"\r\n")[0]
    except OSError:
        return False
while len(seen) < want and time.time() < deadline:
    for ip in cands:
        if ip not in seen and ip not in pending:
            s = socket.socket(); s.setblocking(False)
            s.connect_ex((ip, 80)); pending[ip] = (s, time.time())
    _, w, _ = select.select([], [s for s, _ in pending.values()], [], 0.05)
    for ip, (s, t) in list(pending.items()):
        if s in w and s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0 and serves(s):
            seen[ip] = time.time()
        if s in w or time.time() - t > 0.3:
            s.close(); del pending[ip]
print(json.dumps(seen))
"""


class Cluster:
    """Commands on the nodes of scripts/cluster.sh's cluster $CLUSTER."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env

    def sh(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        proc = subprocess.run([CLUSTER_SH, *args], capture_output=True, text=True, env=self.env, timeout=timeout,
                              stdin=subprocess.DEVNULL)
        if check and proc.returncode != 0:
            raise RuntimeError(f"cluster.sh {' '.join(args)}: {proc.stderr.strip() or proc.stdout.strip()}")
        return proc

    def on(self, node: str, *cmd: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        return self.sh("exec", node, *cmd, check=check, timeout=timeout)

    def json(self, node: str, *cilium: str) -> object:
        return json.loads(self.on(node, "cilium", *cilium, "-o", "json").stdout)

    def running(self) -> bool:
        return all(self.on(n, "cilium", "status", check=False).returncode == 0 for n in ("node1", "node2"))

    def inspect(self, node: str, fmt: str, *names: str) -> list[str]:
        return self.on(node, "docker", "inspect", "-f", fmt, *names).stdout.splitlines()

    def ip(self, node: str, name: str) -> str:
        return self.inspect(node, f'{{{{(index .NetworkSettings.Networks "{NET}").IPAddress}}}}', name)[0]

    def pid(self, node: str, name: str) -> str:
        return self.inspect(node, "{{.State.Pid}}", name)[0]

    def node_ip(self, node: str) -> str:
        return self.on(node, "ip", "-4", "-o", "addr", "show", "eth0").stdout.split()[3].split("/")[0]


def ensure_net(c: Cluster, node: str) -> None:
    if c.on(node, "docker", "network", "inspect", NET, check=False).returncode != 0:
        c.on(node, "docker", "network", "create", "--ipv6", "--subnet", "::1/112", "--driver", "cilium",
             "--ipam-driver", "cilium", NET)


def iperf(c: Cluster, node: str, ns: list[str], server: str, port: int, seconds: int) -> float:
    out = c.on(node, *ns, "iperf3", "-c", server, "-p", str(port), "-t", str(seconds), "--connect-timeout", "5000", "-J",
               timeout=seconds + 60).stdout
    return json.loads(out)["end"]["sum_received"]["bits_per_second"] / 1e9


def throughput(c: Cluster, rounds: int, seconds: int) -> dict:
    """Container->container through VXLAN vs node1->node2 on the underlay, interleaved."""
    srv, cli = "bench-tp-srv", "bench-tp-cli"
    c.on("node2", "docker", "rm", "-f", srv, check=False)
    c.on("node1", "docker", "rm", "-f", cli, check=False)
    c.on("node2", "docker", "run", "-d", "--name", srv, "--net", NET, "busybox", "sleep", "3600")
    c.on("node1", "docker", "run", "-d", "--name", cli, "--net", NET, "busybox", "sleep", "3600")
    srv_ns = ["nsenter", "-t", c.pid("node2", srv), "-n"]
    cli_ns = ["nsenter", "-t", c.pid("node1", cli), "-n"]
    pidfiles = {PORT_VX: "/tmp/bench-iperf-vx.pid", PORT_UL: "/tmp/bench-iperf-ul.pid"}
    try:
        c.on("node2", *srv_ns, "iperf3", "-s", "-D", "-p", str(PORT_VX), "-I", pidfiles[PORT_VX])
        c.on("node2", "iperf3", "-s", "-D", "-p", str(PORT_UL), "-I", pidfiles[PORT_UL])
        time.sleep(0.5)
        paths = {"vxlan": (cli_ns, c.ip("node2", srv), PORT_VX), "underlay": ([], c.node_ip("node2"), PORT_UL)}
        got: dict[str, list[float]] = {k: [] for k in paths}
        sent = {k: 0 for k in paths}  # bytes node1's cilium_vxlan sent during each path's runs
        for _ in range(rounds):
            for name, (ns, server, port) in paths.items():
                before = vxlan_tx_bytes(c)
                got[name].append(iperf(c, "node1", ns, server, port, seconds))
                sent[name] += vxlan_tx_bytes(c) - before
    finally:
        for pf in pidfiles.values():
            c.on("node2", "sh", "-c", f"[ -f {pf} ] && kill $(cat {pf}); rm -f {pf}", check=False)
        c.on("node2", "docker", "rm", "-f", srv, check=False)
        c.on("node1", "docker", "rm", "-f", cli, check=False)
    med = {k: statistics.median(v) for k, v in got.items()}
    return {
        "gbit_s_median": {k: round(v, 2) for k, v in med.items()},
        "gbit_s_min_max": {k: [round(min(v), 2), round(max(v), 2)] for k, v in got.items()},
        "gbit_s_all": {k: [round(x, 2) for x in v] for k, v in got.items()},
        "ratio_vxlan_over_underlay": round(med["vxlan"] / med["underlay"], 3),
        # Proof of the paths: the container runs went through cilium_vxlan, the underlay runs did not.
        "cilium_vxlan_tx_gbytes": {k: round(v / 1e9, 3) for k, v in sent.items()},
    }


def vxlan_tx_bytes(c: Cluster) -> int:
    out = c.on("node1", "cat", "/sys/class/net/cilium_vxlan/statistics/tx_bytes", check=False).stdout.strip()
    return int(out or 0)


def started_at(stamp: str) -> float:
    """Docker's RFC 3339 timestamp (nanoseconds) as unix time."""
    base, _, frac = stamp.rstrip("Z").partition(".")
    return datetime.fromisoformat(base + "+00:00").timestamp() + float("0." + (frac or "0"))


def candidates(c: Cluster, count: int) -> list[str]:
    """node2's next free addresses, as far as the probe can guess them: the
    first addresses of its IPv4 range not held by a running container."""
    me = next(n for n in c.json("node2", "node", "list")["nodes-added"] if n["name"] == "node2")  # type: ignore
    net = ipaddress.ip_network(me["primary-address"]["ipv4"]["alloc-range"])
    used = {e["addressing"]["ipv4"] for e in c.json("node2", "endpoint", "list")}  # type: ignore
    hosts = net.hosts()
    out: list[str] = []
    while len(out) < count + 32:
        ip = str(next(hosts))
        if ip not in used:
            out.append(ip)
    return out


def propagation(c: Cluster, probe: str, count: int, tag: str, timeout: float) -> dict:
    """Start ``count`` targets on node2 at once; per container, seconds from its
    start until the probe on node1 connects to it."""
    names = [f"bench-prop-{tag}-{i}" for i in range(count)]
    cands = candidates(c, count)
    prober = subprocess.Popen(
        [CLUSTER_SH, "exec", "node1", "nsenter", "-t", c.pid("node1", probe), "-n", "python3", "-c", PROBER,
         ",".join(cands), str(count), str(timeout)], env=c.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(1)
        launch = time.time()
        runs = " ".join(
            f"docker run -d --name {n} --net {NET} -l bench=prop-target -l bench-n={tag}-{i} busybox "
            f"httpd -f -p 80 -h /etc >/dev/null &" for i, n in enumerate(names))
        c.on("node2", "sh", "-c", f"{runs} wait", timeout=900)
        seen = json.loads(prober.communicate(timeout=timeout + 60)[0] or "{}")
    finally:
        if prober.poll() is None:
            prober.kill()
    rows = c.inspect("node2", f'{{{{.State.StartedAt}}}} {{{{(index .NetworkSettings.Networks "{NET}").IPAddress}}}}',
                     *names)
    per, starts = [], []
    for row in rows:
        stamp, ip = row.split()
        starts.append(started_at(stamp))
        if ip in seen:
            per.append(seen[ip] - starts[-1])
    missing = count - len(per)
    result = {"containers": count, "reached": len(per), "missing": missing,
              "last_started_after_launch_s": round(max(starts) - launch, 3)}
    if per:
        per.sort()
        result.update({"p50_s": round(statistics.median(per), 3), "max_s": round(per[-1], 3),
                       "min_s": round(per[0], 3),
                       "all_reachable_after_launch_s": round(max(seen[ip] for ip in seen) - launch, 3)
                       if not missing else None})
    c.on("node2", "sh", "-c", "docker rm -f " + " ".join(names) + " >/dev/null", check=False, timeout=600)
    return result


def propagation_runs(c: Cluster, many: int, timeout: float) -> dict:
    probe = "bench-prop-probe-" + str(os.getpid())
    try:
        for node in ("node1", "node2"):
            subprocess.run([CLUSTER_SH, "exec", node, "cilium", "policy", "import", "-"], input=json.dumps(POLICY),
                           text=True, env=c.env, check=True, capture_output=True)
        c.on("node1", "docker", "run", "-d", "--name", probe, "--net", NET, "-l", "bench=prop-probe",
             "busybox", "sleep", "3600")
        tag = str(os.getpid())
        return {"one": propagation(c, probe, 1, tag + "a", timeout),
                "many": propagation(c, probe, many, tag + "b", timeout)}
    finally:
        c.on("node1", "docker", "rm", "-f", probe, check=False)
        for node in ("node1", "node2"):
            c.on(node, "cilium", "policy", "delete", "name=bench-prop", check=False)


def cluster_figures(res: dict) -> list[dict]:
    """The report's rows: VXLAN against the underlay, and propagation."""
    tp, pr = res["throughput"], res["propagation"]
    vx, ul = tp["gbit_s_all"]["vxlan"], tp["gbit_s_all"]["underlay"]
    out = [figure("cross-node TCP, VXLAN / underlay", tp["ratio_vxlan_over_underlay"], "x", baseline="underlay",
                  rounds=ratios(vx, ul), absolute=f"vxlan {spread(vx, 'Gbit/s')}, underlay {spread(ul)}")]
    for k in ("one", "many"):
        r = pr[k]
        if "p50_s" in r:
            out.append(figure(f"cross-node reachability after start, {r['containers']} container(s), p50",
                              r["p50_s"], "s", rounds=[r["min_s"], r["max_s"]],
                              absolute=f"{r['p50_s']} s ({r['min_s']}-{r['max_s']}), {r['missing']} never reached"))
    return out


def table(res: dict) -> str:
    tp, pr = res["throughput"], res["propagation"]
    lines = [f"cluster {res['cluster']}: {res['rounds']} rounds x {res['seconds']} s, iperf3 node1 -> node2",
             f"{'path':<28}{'Gbit/s median':>15}{'min-max':>16}"]
    for k, label in (("vxlan", "container->container VXLAN"), ("underlay", "node->node underlay")):
        lo, hi = tp["gbit_s_min_max"][k]
        lines.append(f"{label:<28}{tp['gbit_s_median'][k]:>15.2f}{f'{lo:.2f}-{hi:.2f}':>16}")
    lines.append(f"vxlan / underlay: {tp['ratio_vxlan_over_underlay']}; bytes out of node1's cilium_vxlan (GB): "
                 f"{tp['cilium_vxlan_tx_gbytes']}")
    lines.append(f"{'propagation (start -> reachable)':<34}{'p50 s':>8}{'max s':>8}{'all after launch s':>20}"
                 f"{'last start s':>14}")
    for k in ("one", "many"):
        r = pr[k]
        lines.append(f"{str(r['containers']) + ' container(s)':<34}{r.get('p50_s', '-'):>8}{r.get('max_s', '-'):>8}"
                     f"{str(r.get('all_reachable_after_launch_s')):>20}{r['last_started_after_launch_s']:>14}"
                     + (f"  ({r['missing']} never reached)" if r["missing"] else ""))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--containers", type=int, default=100, help="targets started at once (the second run)")
    ap.add_argument("--timeout", type=float, default=300, help="seconds the probe waits for the targets")
    ap.add_argument("--up", action="store_true", help="bring up a cluster of 2 nodes and remove it afterwards")
    ap.add_argument("--json", action="store_true", help="print only the JSON")
    args = ap.parse_args()
    env = {**os.environ, "CLUSTER": os.environ.get("CLUSTER", "cilium-cluster")}
    if args.up:
        env["N"] = "2"
    c = Cluster(env)
    if args.up:
        if c.running():
            raise SystemExit(f"cluster {env['CLUSTER']} already runs: leave out --up (or set CLUSTER)")
        c.sh("up", timeout=900)
    elif not c.running():
        raise SystemExit(f"no cluster {env['CLUSTER']} with node1 and node2 answering: "
                         "run `make cluster` first, or pass --up")
    try:
        for node in ("node1", "node2"):
            ensure_net(c, node)
        res = {"cluster": env["CLUSTER"], "rounds": args.rounds, "seconds": args.seconds,
               "throughput": throughput(c, args.rounds, args.seconds),
               "propagation": propagation_runs(c, args.containers, args.timeout)}
        res["figures"] = cluster_figures(res)
    finally:
        if args.up:
            c.sh("down", check=False, timeout=600)
    out_dir = HERE / "results"
    out_dir.mkdir(exist_ok=True)
    path = out_dir / time.strftime("cluster-%Y%m%dT%H%M%SZ.json", time.gmtime())
    path.write_text(json.dumps(res, indent=2) + "\n")
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print(table(res))
        print(f"written to {path}")


if __name__ == "__main__":
    main()
