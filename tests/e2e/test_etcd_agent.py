"""The agent on a real etcd (--kvstore etcd): identities live in etcd, policy
works, and with etcd stopped for 30 s the agent keeps serving what it can,
says so in `cilium status`, and recovers by itself without losing anything."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from docker_cilium.cli.client import Client
from docker_cilium.kvstore.etcd import RPC_TIMEOUT_S
from tests.e2e.conftest import cleanup_bpf, cleanup_docker, cleanup_host, create_network, exec_, net_settings, \
    run_container
from tests.e2e.test_policy_demo import reaches
from tests.helpers import Agent, run, wait_until
from tests.integration.etcd_proc import ETCD_BIN, Member, _free_port, _healthy
from tests.integration.conftest import etcd_server  # noqa: F401  (a real etcd for this module)

pytestmark = pytest.mark.etcd


@pytest.fixture
def etcd_agent(dockerd, etcd_server, tmp_path):  # noqa: F811
    cleanup_host()
    a = Agent(tmp_path / "agent", extra=["--kvstore", "etcd", "--kvstore-opt", f"etcd.address={etcd_server}"])
    try:
        a.start()
        yield a, etcd_server
    finally:
        cleanup_docker()
        a.stop()
        cleanup_host()
        cleanup_bpf(a.bpf_root)


def etcd_keys(address: str, prefix: str) -> list[str]:
    out = run("etcdctl", f"--endpoints={address}", "get", "--prefix", "--keys-only", prefix,
              ).stdout
    return [k for k in out.splitlines() if k]


def test_identities_in_etcd_and_policy(etcd_agent, names):
    agent, address = etcd_agent
    status = agent.cli_json("status")
    assert status["kvstore"]["state"] == "Ok" and "etcd" in status["kvstore"]["msg"]
    net = names("etcd-net")
    create_network(net, "--driver", "cilium", "--ipam-driver", "cilium")
    app1 = run_container(names("app1"), net, "-l", "id=app1",
                         cmd=("httpd", "-f", "-p", "80", "-h", "/var/www"))
    app2 = run_container(names("app2"), net, "-l", "id=app2")
    app3 = run_container(names("app3"), net, "-l", "id=app3")

    def identities():
        eps = agent.cli_json("endpoint", "list")
        ids = {e["container-name"]: e["identity"]["id"] for e in eps}
        return ids if len(ids) == 3 and all(i >= 256 for i in ids.values()) else None
    ids = wait_until(identities, what="identities from etcd")
    keys = etcd_keys(address, "cilium/state/identities/v1/")
    for num in ids.values():
        assert f"cilium/state/identities/v1/id/{num}" in keys
    refs = [k for k in keys if k.startswith("cilium/state/identities/v1/value/")]
    assert len(refs) == 3 and all(k.endswith("/" + agent_node()) for k in refs)

    ip1 = net_settings(app1, net)["IPAddress"]
    out = agent.cli("policy", "import", "tests/fixtures/policies/l3-rule.json").stdout
    assert out.strip() == "Revision: 1"
    assert exec_(app2, "timeout", "3", "wget", "-q", "-O", "-", f"http://{ip1}/", check=False).returncode == 0
    assert exec_(app3, "timeout", "3", "wget", "-q", "-O", "-", f"http://{ip1}/", check=False).returncode != 0

    # Removing a container drops this node's reference to its identity in etcd.
    run("/usr/bin/docker", "rm", "-f", app3)
    wait_until(lambda: len([k for k in etcd_keys(address, "cilium/state/identities/v1/value/")]) == 2,
               what="app3's identity reference to leave etcd")


def agent_node() -> str:
    import socket

    return socket.gethostname()


class PrivateEtcd:
    """An etcd of one test alone (own ports and data directory), so the test
    can stop it and start it again without touching anyone else's."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.client_url = f"http://127.0.0.1:{_free_port()}"
        self.peer_url = f"http://127.0.0.1:{_free_port()}"
        self.address = self.client_url.removeprefix("http://")
        self.proc: subprocess.Popen | None = None

    def start(self) -> "PrivateEtcd":
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.data_dir / "etcd.log", "ab")
        self.proc = subprocess.Popen([
            ETCD_BIN, "--name", "status-test", "--data-dir", str(self.data_dir / "member"),
            "--listen-client-urls", self.client_url, "--advertise-client-urls", self.client_url,
            "--listen-peer-urls", self.peer_url, "--initial-advertise-peer-urls", self.peer_url,
            "--initial-cluster", f"status-test={self.peer_url}"], stdout=log, stderr=subprocess.STDOUT)
        wait_until(lambda: _healthy(Member("status-test", self.client_url, self.peer_url), None), timeout=30, what="private etcd")
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=15)


OUTAGE_S = 30.0
OUTAGE_POLICY = [{"labels": [{"key": "name", "value": "outage-rule"}],
                  "endpointSelector": {"matchLabels": {"id": "srv"}},
                  "ingress": [{"fromEndpoints": [{"matchLabels": {"id": "cli"}}],
                               "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}]}]}]}]


def ready_endpoints(agent, count: int) -> dict[str, dict] | None:
    """The endpoints by container name once ``count`` are ready with a cluster identity."""
    eps = {e["container-name"]: e for e in agent.cli_json("endpoint", "list")}
    ok = len(eps) == count and all(e["state"] == "ready" and e["identity"]["id"] >= 256 for e in eps.values())
    return eps if ok else None


def identity_keys(etcd: PrivateEtcd) -> dict[str, str]:
    out = run("etcdctl", f"--endpoints={etcd.address}", "get", "--prefix", "cilium/state/identities/v1/id/").stdout
    lines = out.splitlines()
    return dict(zip(lines[0::2], lines[1::2]))


def test_etcd_down_30s_agent_serves_and_recovers(dockerd, tmp_path, names):
    """etcd stopped for 30 s under --kvstore etcd: `cilium status` and the API
    say Failure naming etcd (answered at once, the agent keeps answering),
    existing endpoints keep enforcing their policy (real packets), a new
    container whose labels already have an identity gets it and works; once
    etcd is back the agent recovers by itself and nothing is lost (identities,
    allocations, endpoints), and a new label set gets a new identity."""
    etcd = PrivateEtcd(tmp_path / "etcd").start()
    cleanup_host()
    a = Agent(tmp_path / "agent", extra=["--kvstore", "etcd", "--kvstore-opt", f"etcd.address={etcd.address}"])
    try:
        a.start()
        assert a.cli_json("status")["kvstore"] == {"state": "Ok", "msg": f"etcd {etcd.address}"}
        net = names("etcd-outage")
        create_network(net, "--ipv6", "--subnet", "::1/112", "--driver", "cilium", "--ipam-driver", "cilium")
        srv = run_container(names("srv"), net, "-l", "id=srv", cmd=("httpd", "-f", "-p", "80", "-h", "/var/www"))
        cli = run_container(names("cli"), net, "-l", "id=cli")
        other = run_container(names("other"), net, "-l", "id=other")
        policy = tmp_path / "outage-rule.json"
        policy.write_text(json.dumps(OUTAGE_POLICY))
        a.cli("policy", "wait", a.cli("policy", "import", str(policy)).stdout.split()[-1])
        before = wait_until(lambda: ready_endpoints(a, 3), what="three endpoints with identities")
        ids_before = identity_keys(etcd)
        ipam_before = a.cli_json("status")["ipam"]["allocations"]
        srv_ip = net_settings(srv, net)["IPAddress"]
        srv_ip6 = net_settings(srv, net)["GlobalIPv6Address"]
        assert reaches(cli, srv_ip) and not reaches(other, srv_ip)

        etcd.stop()
        down_at = time.monotonic()
        t0 = time.monotonic()
        down = Client(a.api_socket).get("/healthz")
        took = time.monotonic() - t0
        print(f"[timing] status with etcd stopped: {took * 1000:.0f} ms")
        assert down["kvstore"]["state"] == "Failure", down
        assert f"etcd {etcd.address}" in down["kvstore"]["msg"], down
        assert down["cilium"]["state"] == "Ok", down
        # Answered, not hung: a refused connection is reported without waiting for
        # an RPC timeout (which is what a hang would take; measured: ~10 ms).
        assert took < RPC_TIMEOUT_S, f"status took {took:.1f}s with etcd down"
        res = a.cli("status", "-o", "json", check=False)
        # Unhealthy is the exit status too, for the table as for JSON.
        assert res.returncode == 1 and res.stderr == "unhealthy: KVStore\n"
        table = a.cli("status", check=False)
        assert table.returncode == 1 and table.stdout.startswith(f"{'KVStore:':<24}Failure   ")

        # Existing endpoints keep enforcing, both families.
        assert reaches(cli, srv_ip) and reaches(cli, srv_ip6)
        assert not reaches(other, srv_ip) and not reaches(other, srv_ip6)
        # Labels this node already holds an identity for: the new container gets it and is allowed.
        cli2 = run_container(names("cli2"), net, "-l", "id=cli")
        during = wait_until(lambda: ready_endpoints(a, 4), timeout=20, what="cli2 ready while etcd is down")
        assert during[names("cli2")]["identity"]["id"] == before[names("cli")]["identity"]["id"]
        assert reaches(cli2, srv_ip)
        # still down: nothing above needed it
        assert json.loads(a.cli("status", "-o", "json", check=False).stdout)["kvstore"]["state"] == "Failure"
        time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - down_at)))

        etcd.start()
        wait_until(lambda: a.cli_json("status")["kvstore"]["state"] == "Ok", timeout=60,
                   what="kvstore Ok after etcd is back")
        assert a.proc is not None and a.proc.poll() is None
        # Nothing lost: the same identities in etcd, allocations and endpoints (cli2's added).
        assert identity_keys(etcd) == ids_before
        after = ready_endpoints(a, 4)
        assert after is not None
        for name, ep in before.items():
            assert (after[name]["id"], after[name]["identity"]["id"], after[name]["addressing"]) == \
                (ep["id"], ep["identity"]["id"], ep["addressing"]), name
        ipam_after = a.cli_json("status")["ipam"]["allocations"]
        assert ipam_before.items() <= ipam_after.items() and len(ipam_after) == len(ipam_before) + 2
        # This node's references are in etcd again, cli2's included (its label set's).
        wait_until(lambda: len(etcd_keys(etcd.address, "cilium/state/identities/v1/value/")) == 3,
                   timeout=30, what="the node's three identity references in etcd")
        # A new label set gets a new identity from the store that came back, and policy applies to it.
        late = run_container(names("late"), net, "-l", "id=late")
        eps = wait_until(lambda: ready_endpoints(a, 5), timeout=30, what="a new identity after recovery")
        assert eps[names("late")]["identity"]["id"] not in {e["identity"]["id"] for e in before.values()}
        assert not reaches(late, srv_ip) and reaches(cli, srv_ip)
    finally:
        cleanup_docker()
        a.stop()
        etcd.stop()
        cleanup_host()
        cleanup_bpf(a.bpf_root)
