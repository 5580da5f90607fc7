"""Policy import latency with N endpoints, and endpoint creation cost inside the agent.

`cilium policy import` regenerates every local endpoint before it returns,
so "import returned" means "enforced everywhere"; this measures how long that
takes as the number of endpoints grows, and probes a denied flow right after
the call returns to show enforcement is already in place. CreateEndpoint and
Join durations are read from the agent's own debug log (--agent-log).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import time

DOCKER = "/usr/bin/docker"
NET = "bench-pol"


def sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=120)


def plugin_durations(log_path: str) -> dict[str, float]:
    found: dict[str, list[float]] = {}
    with open(log_path) as f:
        for line in f:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if rec.get("event") == "plugin.call":
                found.setdefault(rec["method"].split(".")[-1], []).append(rec["duration_ms"])
    return {k: round(statistics.median(v), 2) for k, v in found.items() if k in ("CreateEndpoint", "Join")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("-n", type=int, default=20, help="endpoints")
    ap.add_argument("--cilium", default="cilium")
    ap.add_argument("--agent-log", default="", help="agent log (JSON, --debug) for CreateEndpoint/Join times")
    args = ap.parse_args()
    names = [f"bench-pol-{i}" for i in range(args.n)]
    sh(DOCKER, "rm", "-f", *names, "bench-pol-server", check=False)
    sh(DOCKER, "network", "rm", NET, check=False)
    sh(DOCKER, "network", "create", "--ipv6", "--subnet", "::1/112", "--driver", "cilium", "--ipam-driver",
       "cilium", NET)
    try:
        sh(DOCKER, "run", "-d", "--name", "bench-pol-server", "--net", NET, "-l", "id=app1", "busybox",
           "httpd", "-f", "-p", "80", "-h", "/var/www")
        for i, name in enumerate(names):
            sh(DOCKER, "run", "-d", "--name", name, "--net", NET, "-l", f"id=client{i % 5}", "busybox",
               "sleep", "3600")
        server_ip = sh(DOCKER, "inspect", "-f", f'{{{{(index .NetworkSettings.Networks "{NET}").IPAddress}}}}',
                       "bench-pol-server").stdout.strip()
        time.sleep(2)  # labels arrive through Docker events
        rule = [{"labels": [{"key": "name", "value": "bench"}],
                 "endpointSelector": {"matchLabels": {"id": "app1"}},
                 "ingress": [{"fromEndpoints": [{"matchLabels": {"id": "client0"}}],
                              "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}]}]}]}]
        with tempfile.NamedTemporaryFile("w", suffix=".json") as f:
            json.dump(rule, f)
            f.flush()
            samples = []
            for _ in range(5):
                t0 = time.perf_counter()
                sh(args.cilium, "policy", "import", f.name)
                samples.append((time.perf_counter() - t0) * 1000)
                # Right after the call returns, a client not allowed is denied.
                probe = sh(DOCKER, "exec", names[1], "timeout", "2", "wget", "-q", "-O", "-",
                           f"http://{server_ip}/", check=False)
                assert probe.returncode != 0, "policy not enforced when import returned"
                sh(args.cilium, "policy", "delete", "name=bench")
        res = {"endpoints": args.n + 1, "policy_import_cli_ms_median": round(statistics.median(samples), 1),
               "enforced_when_import_returned": True}
        if args.agent_log:
            res["agent_median_ms"] = plugin_durations(args.agent_log)
        print(json.dumps(res, indent=2))
    finally:
        sh(DOCKER, "rm", "-f", *names, "bench-pol-server", check=False)
        sh(DOCKER, "network", "rm", NET, check=False)


if __name__ == "__main__":
    main()
