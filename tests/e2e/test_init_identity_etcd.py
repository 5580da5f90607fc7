"""An identity that cannot be allocated because etcd is unreachable when the
container's labels arrive: the endpoint stays closed, shows
``waiting-for-identity`` in `cilium endpoint list` and `cilium status`, and
gets its identity by retry once etcd answers again (issue 6, item 1).

A module of its own: its agent uses Docker's plugin socket, which the
module-scoped agent of the other e2e modules would hold too."""

from __future__ import annotations

import json
import time

import pytest

from tests.e2e.conftest import cleanup_bpf, cleanup_docker, cleanup_host, create_network, net_settings, \
    run_container
from tests.e2e.test_init_identity import HTTPD, endpoint_of, probe_logs, run_probe
from tests.helpers import Agent, wait_until
from tests.integration.etcd_proc import start_cluster

pytestmark = pytest.mark.etcd


@pytest.fixture
def etcd_agent(dockerd, tmp_path):
    """An agent on an etcd of this test alone, which it may pause."""
    cluster = start_cluster(1)
    cleanup_host()
    a = Agent(tmp_path / "agent", extra=["--kvstore", "etcd", "--kvstore-opt",
                                         f"etcd.address={cluster.members[0].address}"])
    try:
        a.start()
        yield a, cluster.members[0]
    finally:
        cleanup_docker()
        a.stop()
        cluster.stop()
        cleanup_host()
        cleanup_bpf(a.bpf_root)


def test_etcd_down_at_label_time_waits_closed_then_gets_identity(etcd_agent, names):
    agent, etcd = etcd_agent
    net = names("init-kv")
    create_network(net, "--driver", "cilium", "--ipam-driver", "cilium")
    server = run_container(names("srv"), net, "-l", "id=srv", cmd=HTTPD)
    ip = net_settings(server, net)["IPAddress"]
    wait_until(lambda: endpoint_of(agent, server)["identity"]["id"] >= 256, what="the server's identity")

    etcd.pause()
    try:
        probe = run_probe(names("probe"), net, "id=probe", ip)
        wait_until(lambda: endpoint_of(agent, probe)["state"] == "waiting-for-identity",
                   what="the probe waiting for its identity")
        eid = endpoint_of(agent, probe)["id"]
        listing = agent.cli("endpoint", "list").stdout
        assert any(str(eid) in line and "waiting-for-identity" in line for line in listing.splitlines()), listing
        # etcd is paused: status reports it and exits 1 (unhealthy), the rest is still there.
        res = agent.cli("status", "-o", "json", check=False)
        status = json.loads(res.stdout)
        assert res.returncode == 1 and status["kvstore"]["state"] == "Failure", status
        assert eid in status["identity-pending"]["waiting-for-identity"], status
        assert f"waiting-for-identity ({eid})" in agent.cli("status", check=False).stdout
        time.sleep(3)
        ep = endpoint_of(agent, probe)
        assert ep["identity"]["id"] == 5 and ep["state"] == "waiting-for-identity"
        assert "container:id=probe" in ep["labels"]["orchestration-identity"]  # kept, not rolled back
        tries, ok = probe_logs(probe)
        assert tries >= 2 and ok == 0, (tries, ok)  # closed while it waits (no policy exists at all)
    finally:
        etcd.resume()
    wait_until(lambda: (e := endpoint_of(agent, probe))["state"] == "ready" and e["identity"]["id"] >= 256,
               timeout=60, what="the probe's identity once etcd is back")
    # No rule selects it: with its identity, it reaches the server.
    wait_until(lambda: probe_logs(probe)[1] > 0, timeout=30, what="the probe's first answer")
    assert agent.cli_json("status")["identity-pending"] == {"waiting-for-identity": [], "init": []}
