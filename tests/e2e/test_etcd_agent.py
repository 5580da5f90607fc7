"""The agent on a real etcd (--kvstore etcd): identities live in etcd, policy
works, and `cilium status` reports the store going away and coming back."""

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


def test_status_reports_kvstore_down_and_back(dockerd, tmp_path):
    """The real Daemon.status: Ok with etcd up, Failure naming etcd while it is
    down (the agent keeps answering), Ok again once it is back."""
    etcd = PrivateEtcd(tmp_path / "etcd").start()
    cleanup_host()
    a = Agent(tmp_path / "agent", extra=["--kvstore", "etcd", "--kvstore-opt", f"etcd.address={etcd.address}"])
    try:
        a.start()
        assert a.cli_json("status")["kvstore"] == {"state": "Ok", "msg": f"etcd {etcd.address}"}
        etcd.stop()
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
        etcd.start()
        wait_until(lambda: a.cli_json("status")["kvstore"]["state"] == "Ok", timeout=60,
                   what="kvstore Ok after etcd is back")
        assert a.proc is not None and a.proc.poll() is None
    finally:
        a.stop()
        etcd.stop()
        cleanup_host()
        cleanup_bpf(a.bpf_root)
