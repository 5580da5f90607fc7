"""The XDP prefilter through a real agent and the `cilium` CLI: a veth into a
test namespace is the prefilter device (never the machine's uplink).

`cilium prefilter update` stops traffic from the namespace (IPv4 and IPv6) and
counts the drops, bad CIDRs and stale revisions are refused with their
reason (CLI and API), the list survives an agent restart and keeps dropping
while the agent is down, `delete` restores traffic, `cilium cleanup` takes
the program off, and an agent started without --prefilter-device takes it
off too and answers 404.
"""

from __future__ import annotations

import os
import socket

import pytest

from docker_cilium.cli.client import Client
from docker_cilium.datapath import xdp
from docker_cilium.errors import BadRequest
from tests.e2e.conftest import running_agent
from tests.helpers import VENV_BIN, run
from tests.outside import Outside


@pytest.fixture
def outside():
    o = Outside("e")
    try:
        yield o
    finally:
        o.cleanup()


@pytest.fixture
def pf_agent(dockerd, outside, tmp_path_factory):
    yield from running_agent(tmp_path_factory.mktemp("pf"),
                             extra=["--prefilter-device", outside.host_if, "--prefilter-mode", "generic"])


def _lines(agent, *args: str) -> list[str]:
    return agent.cli(*args).stdout.strip().splitlines()


def test_prefilter_through_the_agent(pf_agent, outside):
    agent = pf_agent
    ifindex = socket.if_nametoindex(outside.host_if)
    (attached,) = xdp.query(ifindex)
    assert attached.mode == "generic" and xdp.prog_name(attached.prog_id) == xdp.XDP_PROGRAM
    assert _lines(agent, "prefilter", "list") == ["Revision: 1"]
    assert outside.ping(outside.host4) and outside.ping(outside.host6)

    assert _lines(agent, "prefilter", "update", "--cidr", f"{outside.ns4}/32", "--cidr", f"{outside.ns6}/128") == [
        "Updated 2 prefilter entries"]
    assert not outside.ping(outside.host4), "IPv4 from a denied source got through"
    assert not outside.ping(outside.host6), "IPv6 from a denied source got through"
    assert _lines(agent, "prefilter", "list") == ["Revision: 2", f"{outside.ns4}/32", f"{outside.ns6}/128"]
    assert agent.cli_json("prefilter", "list")["spec"] == {"revision": 2,
                                                           "deny": [f"{outside.ns4}/32", f"{outside.ns6}/128"]}
    assert any("Policy denied (CIDR)" in line and "INGRESS" in line for line in _lines(agent, "bpf", "metrics", "list"))

    # bad input: the CLI says why before sending; the API says it too (400), and so does a stale revision
    res = agent.cli("prefilter", "update", "--cidr", "10.0.0.1", check=False)
    assert res.returncode == 2 and "invalid CIDR '10.0.0.1': no prefix length" in res.stderr
    with pytest.raises(BadRequest, match=r"deny\[1\]: invalid CIDR '10.0.0.0/33'"):
        Client(agent.api_socket).request("PATCH", "/prefilter", body={"deny": ["10.0.0.0/8", "10.0.0.0/33"]})
    res = agent.cli("prefilter", "update", "--revision", "1", "--cidr", "10.0.0.0/8", check=False)
    assert res.returncode == 1 and res.stderr.strip() == (
        "Error: prefilter revision is 2, not 1: list the prefilter again and retry with its current revision (409)")
    res = agent.cli("prefilter", "delete", "--cidr", "10.0.0.0/8", check=False)
    assert res.returncode == 1 and "not in the prefilter deny list: 10.0.0.0/8" in res.stderr
    assert _lines(agent, "prefilter", "list")[0] == "Revision: 2"

    # the agent down: the program and the tries keep dropping; restarted: the same list
    agent.stop()
    assert not outside.ping(outside.host4), "the prefilter stopped with the agent"
    agent.start()
    assert _lines(agent, "prefilter", "list") == ["Revision: 2", f"{outside.ns4}/32", f"{outside.ns6}/128"]
    assert not outside.ping(outside.host4) and not outside.ping(outside.host6)

    assert _lines(agent, "prefilter", "delete", "--cidr", f"{outside.ns4}/32") == ["Deleted 1 prefilter entries"]
    assert outside.ping(outside.host4), "IPv4 not restored after delete"
    assert not outside.ping(outside.host6)
    agent.cli("prefilter", "delete", "--revision", "3", "--cidr", f"{outside.ns6}/128")
    assert outside.ping(outside.host6), "IPv6 not restored after delete"
    assert _lines(agent, "prefilter", "list") == ["Revision: 4"]

    # the agent stopped, `cilium cleanup` takes the prefilter off and unpins it
    agent.cli("prefilter", "update", "--cidr", f"{outside.ns4}/32")
    agent.stop()
    assert not outside.ping(outside.host4)
    res = run(str(VENV_BIN / "cilium"), "-H", agent.api_socket, "cleanup", "-f", "--lib-dir", str(agent.lib_dir),
              "--state-dir", str(agent.state_dir), "--bpf-root", agent.bpf_root, "--plugin-socket", agent.plugin_socket)
    assert f"removed XDP program from {outside.host_if}" in res.stdout, res.stdout
    assert xdp.query(ifindex) == [] and outside.ping(outside.host4)
    assert not os.path.exists(os.path.join(agent.bpf_root, "cilium", "progs", xdp.XDP_PROGRAM))

    # started again (the list kept in the node store), then without --prefilter-device:
    # the program comes off, the API says the prefilter is off
    agent.start()
    assert _lines(agent, "prefilter", "list") == ["Revision: 5", f"{outside.ns4}/32"]
    assert not outside.ping(outside.host4)
    agent.stop()
    agent.extra = []
    agent.start()
    assert xdp.query(ifindex) == [] and outside.ping(outside.host4)
    res = agent.cli("prefilter", "list", check=False)
    assert res.returncode == 1 and res.stderr.strip() == (
        "Error: prefilter is not enabled in the agent: start cilium-agent with --prefilter-device DEV (404)")


def test_a_missing_prefilter_device_stops_the_start(dockerd, tmp_path_factory):
    for agent in running_agent(tmp_path_factory.mktemp("pfbad"), extra=["--prefilter-device", "nosuchdev0"],
                               start=False):
        with pytest.raises(AssertionError, match="agent exited with 1"):
            agent.start()
        assert "prefilter device 'nosuchdev0' does not exist" in agent.log()
