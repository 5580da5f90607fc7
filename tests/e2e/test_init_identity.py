"""A container passes no traffic before its real identity and policy are in
the maps (issue 6, item 1), probed from its very first moment, with a real
dockerd and a real agent (tests/e2e/test_init_identity_etcd.py: the same
with etcd unreachable at label time)."""

from __future__ import annotations

import json
import time

from tests.e2e.conftest import TEST_LABEL, create_network, net_settings, run_container
from tests.helpers import Agent, docker, wait_until

HTTPD = ("httpd", "-f", "-p", "80", "-h", "/var/www")


def probe_cmd(ip: str) -> tuple[str, ...]:
    """Try the server from the container's first instant on, in a loop; one
    line per try, ``OK`` for each that got an answer."""
    return ("sh", "-c", f"while true; do echo TRY; timeout 1 wget -q -O /dev/null http://{ip}/ && echo OK; "
                        "usleep 20000; done")


def probe_logs(container: str) -> tuple[int, int]:
    out = docker("logs", container).stdout.split()
    return out.count("TRY"), out.count("OK")


def endpoint_of(agent: Agent, container: str) -> dict:
    return agent.cli_json("endpoint", "get", f"container-id:{container}")


def run_probe(name: str, net: str, label: str, ip: str) -> str:
    return docker("run", "-d", "--name", name, "--label", TEST_LABEL, "--net", net, "-l", label,
                  "busybox", *probe_cmd(ip)).stdout.strip()


def import_policy(agent: Agent, tmp_path, rules: list[dict]) -> None:
    path = tmp_path / f"policy-{time.monotonic_ns()}.json"
    path.write_text(json.dumps(rules))
    agent.cli("policy", "import", str(path))


def test_egress_deny_all_holds_from_the_first_packet(agent, names, tmp_path):
    """Before the fix the probe reached the server right after `docker run`,
    while the endpoint still held reserved:init and nothing was enforced."""
    net = names("init-net")
    create_network(net, "--driver", "cilium", "--ipam-driver", "cilium")
    server = run_container(names("srv"), net, "-l", "id=srv", cmd=HTTPD)  # no policy protects it
    ip = net_settings(server, net)["IPAddress"]
    import_policy(agent, tmp_path, [{"endpointSelector": {"matchLabels": {"id": "probe"}}, "egress": [{}]}])
    probes = [run_probe(names(f"probe{i}"), net, "id=probe", ip) for i in range(3)]
    for p in probes:
        wait_until(lambda: endpoint_of(agent, p)["identity"]["id"] >= 256, what="the probe's identity")
    time.sleep(2)  # a few more tries under the real policy
    for p in probes:
        tries, ok = probe_logs(p)
        assert tries >= 2 and ok == 0, (p, tries, ok)
        ep = endpoint_of(agent, p)
        assert ep["state"] == "ready" and ep["policy"]["egress-enforced"]

    # The same probe does get through once a rule allows it: the test can fail.
    import_policy(agent, tmp_path, [{"endpointSelector": {"matchLabels": {"id": "probe"}},
                                     "egress": [{"toEndpoints": [{"matchLabels": {"id": "srv"}}]}]}])
    wait_until(lambda: probe_logs(probes[0])[1] > 0, timeout=30, what="the allowed probe's first answer")
    agent.cli("policy", "delete", "--all")
