"""An allowed flow's cost as rules grow: cilium (BPF hash lookups) vs the same
number of iptables rules on Docker's bridge (a linear walk per packet).

For each size N (``--sizes``, default 0,1000,10000,50000):

* cilium: a private agent (own state and bpffs; the shared plugin socket, so
  run it under ``flock /tmp/dc-e2e.lock``) enforces one rule allowing the
  client to reach the server on the iperf3 and HTTP ports, plus N rules
  imported with ``cilium policy import``, each allowing a /32 CIDR that is
  not the client: every one gets a CIDR identity and an ipcache (LPM) entry,
  and the first ``SERVER_RULES`` of them select the server, filling its
  policy map (the per-endpoint limit is 16,384 entries, as in Cilium); the
  rest select a label no container has;
* bridge: N rules in the filter table's DOCKER-USER path (a chain
  ``BENCH-RULES`` jumped to from DOCKER-USER, so cleanup is one chain), each
  dropping a /32 source that is not the client, ahead of an ACCEPT of the
  flow; FORWARD jumps to DOCKER-USER first, so every packet of the flow (both
  directions) walks them.

Each round sets every size in turn and measures, interleaved cilium/bridge,
TCP throughput (iperf3, client -> server, ``--seconds``) and connection rate
(wrk against bench/httpd.c with ``Connection: close``: one TCP connection per
request).
iperf3, wrk and httpd are host binaries run in the containers' network
namespaces (nsenter). Prints CONTRACT15 ``figures`` and ``series``.

    flock /tmp/dc-e2e.lock .venv/bin/python -m bench.policy_rules --json

Measured (2 shared cores, 5 other jobs; --rounds 3 --seconds 4; medians (min-max)):

    rules   cilium Gbit/s      cilium req/s         bridge+iptables Gbit/s  bridge+iptables req/s
    0       10.33 (8.68-10.55) 17384 (16022-17876)  10.46 (9.33-10.69)      14340 (12147-16370)
    1000     9.56 (7.21-10.63) 16275 (15199-17080)   7.00 (4.53-9.11)        7096 (6480-8856)
    10000    8.50 (8.04-10.08) 17820 (14239-17984)   4.13 (3.20-4.25)        1694 (1257-1891)
    50000    9.82 (8.51-11.01) 17868 (16320-18367)   1.00 (0.80-1.01)         347 (345-405)

At 50,000 rules vs 0 (median of per-round ratios): cilium 0.93x throughput
(0.82-1.27 over rounds: within this machine's noise), 1.06x connection rate;
iptables 0.095x and 0.028x.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.helpers import VENV_BIN, Agent, docker

PLUGIN_SOCKET = "/run/docker/plugins/cilium.sock"
HERE = Path(__file__).resolve().parent
NETS = {"cilium": "bench-rules-cilium", "bridge": "bench-rules-bridge"}
IPERF_PORT, HTTP_PORT = 5201, 8080
CHAIN = "BENCH-RULES"
#: CIDR rules selecting the server: 2 policy-map entries each (the entry and
#: its L4 marker) stay under the 16,384 entries one endpoint may hold.
SERVER_RULES = 8000
SERVER_LABEL, CLIENT_LABEL = "role=rules-server", "role=rules-client"
LOSS_GOAL = 0.95  # an allowed flow keeps >= 95% of its 0-rule rate


def sh(*cmd: str, check: bool = True, timeout: float = 300, stdin: str | None = None) -> str:
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=stdin)
    if check and res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)[:200]}: exit {res.returncode}: {res.stderr.strip()[:500]}")
    return res.stdout


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def prefix(i: int) -> str:
    """The i-th /32 no container has (10.200.0.0 onwards)."""
    return f"10.{200 + (i >> 16)}.{(i >> 8) & 255}.{i & 255}/32"


def base_rule() -> dict:
    return {"labels": [{"key": "bench", "value": "rules-base"}],
            "endpointSelector": {"matchLabels": {"role": "rules-server"}},
            "ingress": [{"fromEndpoints": [{"matchLabels": {"role": "rules-client"}}],
                         "toPorts": [{"ports": [{"port": str(IPERF_PORT), "protocol": "TCP"},
                                                {"port": str(HTTP_PORT), "protocol": "TCP"}]}]}]}


def cidr_rules(n: int) -> list[dict]:
    return [{"labels": [{"key": "bench", "value": "rules"}],
             "endpointSelector": {"matchLabels": {"role": "rules-server" if i < SERVER_RULES else "nobody"}},
             "ingress": [{"fromCIDR": [prefix(i)],
                          "toPorts": [{"ports": [{"port": str(IPERF_PORT), "protocol": "TCP"}]}]}]}
            for i in range(n)]


class Side:
    """One network's server and client: the server runs iperf3 -s and httpd
    in its namespace; measurements run in the client's."""

    def __init__(self, name: str, net: str, httpd: Path, labels: tuple[str, str] | None) -> None:
        self.name = name
        self.containers = [f"bench-rules-{name}-srv", f"bench-rules-{name}-cli"]
        docker("rm", "-f", *self.containers, check=False)
        for c, label in zip(self.containers, labels or (None, None)):
            docker("run", "-d", "--name", c, "--net", net, *(["-l", label] if label else []), "busybox",
                   "sleep", "3600")
        pids = [docker("inspect", "-f", "{{.State.Pid}}", c).stdout.strip() for c in self.containers]
        self.srv_ns, self.cli_ns = (["nsenter", "-t", p, "-n"] for p in pids)
        self.server_ip, self.client_ip = (
            docker("inspect", "-f", f'{{{{(index .NetworkSettings.Networks "{net}").IPAddress}}}}', c).stdout.strip()
            for c in self.containers)
        self.procs = [subprocess.Popen([*self.srv_ns, "iperf3", "-s", "-p", str(IPERF_PORT)],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
                      subprocess.Popen([*self.srv_ns, str(httpd), str(HTTP_PORT)],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
        time.sleep(0.5)

    def throughput(self, seconds: int) -> float:
        """Gbit/s received by the server."""
        out = sh(*self.cli_ns, "iperf3", "-c", self.server_ip, "-p", str(IPERF_PORT), "-t", str(seconds), "-J",
                 timeout=seconds + 60)
        return json.loads(out)["end"]["sum_received"]["bits_per_second"] / 1e9

    def conn_rate(self, seconds: int) -> float:
        """Requests/s with one new TCP connection per request."""
        out = sh(*self.cli_ns, "wrk", "-t1", "-c8", f"-d{seconds}s", "-H", "Connection: close",
                 f"http://{self.server_ip}:{HTTP_PORT}/", timeout=seconds + 60)
        for line in out.splitlines():
            if line.startswith("Requests/sec:"):
                return float(line.split()[1])
        raise RuntimeError(f"wrk printed no rate:\n{out}")

    def close(self) -> None:
        for p in self.procs:
            p.kill()
            p.wait()
        docker("rm", "-f", *self.containers, check=False)


class Cilium:
    """Rules through ``cilium policy import`` against the private agent."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    def cli(self, *args: str) -> str:
        return sh(str(VENV_BIN / "cilium"), "-H", self.agent.api_socket, *args)

    def set_rules(self, n: int) -> float:
        """Replace the N rules; returns the import's seconds (the whole CLI call)."""
        self.cli("policy", "delete", "bench=rules")
        if not n:
            return 0.0
        with tempfile.NamedTemporaryFile("w", suffix=".json") as f:
            json.dump(cidr_rules(n), f)
            f.flush()
            t0 = time.perf_counter()
            self.cli("policy", "import", f.name)
            return time.perf_counter() - t0


class Iptables:
    """N non-matching rules ahead of the flow's ACCEPT, in a chain DOCKER-USER jumps to."""

    def __init__(self, side: Side) -> None:
        self.side = side
        self.cleanup()
        sh("iptables", "-N", CHAIN)
        sh("iptables", "-I", "DOCKER-USER", "1", "-j", CHAIN)

    def set_rules(self, n: int) -> float:
        s = self.side
        lines = ["*filter", f"-F {CHAIN}"]
        lines += [f"-A {CHAIN} -s {prefix(i)} -j DROP" for i in range(n)]
        lines += [f"-A {CHAIN} -s {s.client_ip}/32 -d {s.server_ip}/32 -j ACCEPT",
                  f"-A {CHAIN} -s {s.server_ip}/32 -d {s.client_ip}/32 -j ACCEPT", "COMMIT", ""]
        t0 = time.perf_counter()
        sh("iptables-restore", "--noflush", stdin="\n".join(lines))
        return time.perf_counter() - t0

    @staticmethod
    def cleanup() -> None:
        sh("iptables", "-D", "DOCKER-USER", "-j", CHAIN, check=False)
        sh("iptables", "-F", CHAIN, check=False)
        sh("iptables", "-X", CHAIN, check=False)


def med(xs: list[float]) -> float:
    return statistics.median(xs)


def spread(xs: list[float]) -> str:
    return f"{med(xs):.2f} ({min(xs):.2f}-{max(xs):.2f})"


def figures(sizes: list[int], data: dict) -> list[dict]:
    """At the largest size vs 0 rules, for each path and metric: the median
    of the per-round ratios (both sizes measured in the same round), goal for
    cilium only (the flat claim)."""
    top = sizes[-1]
    out = []
    for metric, unit, label in (("gbit_s", "Gbit/s", "TCP throughput"), ("req_s", "req/s", "connection rate")):
        for path in ("cilium", "iptables"):
            zero, at = data[path][metric][0], data[path][metric][top]
            per_round = [a / z for a, z in zip(at, zero)]
            ratio = med(per_round)
            goal = f">= {LOSS_GOAL}x its 0-rule rate" if path == "cilium" else None
            out.append({
                "name": f"{label} at {top} rules vs 0 rules, {path if path == 'cilium' else 'iptables (bridge)'}",
                "value": round(ratio, 3), "unit": "x", "goal": goal,
                "met": (ratio >= LOSS_GOAL) if path == "cilium" else None,
                "baseline": None, "ratio": None,
                "absolute": f"{unit}: 0 rules {spread(zero)}, {top} rules {spread(at)} (median (min-max)); "
                            f"value: median of {len(per_round)} per-round ratios",
                "min": round(min(per_round), 3), "max": round(max(per_round), 3)})
    return out


def series(sizes: list[int], data: dict) -> dict:
    return {key: {"title": title, "xlabel": "rules", "ylabel": unit, "x": sizes,
                  "lines": {"cilium": [round(med(data["cilium"][metric][n]), 2) for n in sizes],
                            "iptables (bridge)": [round(med(data["iptables"][metric][n]), 2) for n in sizes]}}
            for key, metric, unit, title in (
                ("policy_rules_tcp", "gbit_s", "Gbit/s", "allowed flow TCP throughput vs number of rules"),
                ("policy_rules_crr", "req_s", "req/s", "allowed flow connection rate vs number of rules"))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="0,1000,10000,50000")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=4)
    ap.add_argument("--json", action="store_true", help="print only the JSON result on stdout")
    args = ap.parse_args()
    sizes = sorted({int(s) for s in args.sizes.split(",")} | {0})
    data: dict = {p: {"gbit_s": {}, "req_s": {}} for p in ("cilium", "iptables")}
    setup_s: dict = {"cilium_import_s": {}, "iptables_restore_s": {}}
    sides: list[Side] = []
    with tempfile.TemporaryDirectory(prefix="bench-rules-") as tmp:
        httpd = Path(tmp) / "httpd"
        sh("gcc", "-O2", "-o", str(httpd), str(HERE / "httpd.c"))
        agent = Agent(Path(tmp) / "agent", plugin_socket=PLUGIN_SOCKET)
        agent.start()
        try:
            for net in NETS.values():
                docker("network", "rm", net, check=False)
            docker("network", "create", "--driver", "cilium", "--ipam-driver", "cilium", NETS["cilium"])
            docker("network", "create", NETS["bridge"])
            cil = Side("cilium", NETS["cilium"], httpd, (SERVER_LABEL, CLIENT_LABEL))
            sides.append(cil)
            br = Side("bridge", NETS["bridge"], httpd, None)
            sides.append(br)
            paths = {"cilium": (Cilium(agent), cil), "iptables": (Iptables(br), br)}
            time.sleep(2)  # container labels arrive through Docker's events
            with tempfile.NamedTemporaryFile("w", suffix=".json") as f:
                json.dump([base_rule()], f)
                f.flush()
                paths["cilium"][0].cli("policy", "import", f.name)
            eps = json.loads(paths["cilium"][0].cli("endpoint", "list", "-o", "json"))
            if not any(e["policy"]["ingress-enforced"] for e in eps):
                raise RuntimeError("the cilium server enforces no ingress policy: nothing would be measured")
            for path in data:
                for metric in ("gbit_s", "req_s"):
                    data[path][metric] = {n: [] for n in sizes}
            for r in range(args.rounds):  # every size in every round: drift spreads over all of them
                for n in sizes:
                    setup_s["cilium_import_s"].setdefault(n, []).append(round(paths["cilium"][0].set_rules(n), 2))
                    setup_s["iptables_restore_s"].setdefault(n, []).append(
                        round(paths["iptables"][0].set_rules(n), 2))
                    for path, (_, side) in paths.items():
                        data[path]["gbit_s"][n].append(side.throughput(args.seconds))
                        data[path]["req_s"][n].append(side.conn_rate(args.seconds))
                    log(f"round {r}, {n} rules: cilium import {setup_s['cilium_import_s'][n][-1]} s, "
                        f"iptables-restore {setup_s['iptables_restore_s'][n][-1]} s; " + "; ".join(
                            f"{p} {data[p]['gbit_s'][n][-1]:.2f} Gbit/s {data[p]['req_s'][n][-1]:.0f} req/s"
                            for p in data))
        finally:
            for side in sides:
                side.close()
            Iptables.cleanup()
            for net in NETS.values():
                docker("network", "rm", net, check=False)
            agent.stop()
            from tests.e2e.conftest import cleanup_bpf, cleanup_host
            cleanup_host()
            cleanup_bpf(agent.bpf_root)
    result = {"sizes": sizes, "rounds": args.rounds, "seconds": args.seconds,
              "server_rules_max": SERVER_RULES, **setup_s,
              "gbit_s": {p: {n: [round(x, 3) for x in v] for n, v in d["gbit_s"].items()} for p, d in data.items()},
              "req_s": {p: {n: [round(x, 1) for x in v] for n, v in d["req_s"].items()} for p, d in data.items()},
              "figures": figures(sizes, data), "series": series(sizes, data)}
    print(json.dumps(result, indent=None if args.json else 2))


if __name__ == "__main__":
    main()
