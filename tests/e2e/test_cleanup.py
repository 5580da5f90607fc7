"""`cilium cleanup`, `cilium map` and `cilium kvstore` against a real agent.

Acceptance (issue 8): after the agent stops, `cilium cleanup -f` leaves no
cilium_host, no pinned maps of ours, no tc programs and no iptables chains
of ours, and the next agent start works from there. Each check reads the
host itself (netlink, bpffs, iptables-save), not the CLI's own report.
"""

from __future__ import annotations

import json
import os

import pytest
from pyroute2 import IPRoute

from docker_cilium import defaults
from docker_cilium.datapath import proxyroute
from docker_cilium.datapath.cleanup import is_our_link, pinned_prog_ids
from tests.e2e.conftest import create_network, exec_, iptables_leaks, net_settings, run_container, running_agent
from tests.helpers import VENV_BIN, Agent, run

IDENTITY_KEY = "cilium/state/identities/v1/id/54321"


def our_links() -> list[str]:
    with IPRoute() as ip:
        return sorted(l.get("ifname") for l in ip.get_links() if is_our_link(l.get("ifname") or ""))


def agent_tc_filters(prog_ids: set[int]) -> list[str]:
    """tc attachments running the agent's programs, on any link, as bpftool lists them."""
    out = json.loads(run("bpftool", "-j", "net", "show").stdout)
    return [f"{t['devname']} {t['name']}" for dev in out for t in dev.get("tc", []) if t["id"] in prog_ids]


def pins(agent: Agent) -> list[str]:
    return sorted(os.path.join(d, f) for d, _, files in os.walk(agent.bpf_root) for f in files)


def cleanup_cli(agent: Agent, *args: str, input: str | None = None, sockets_in: str | None = None):
    """`cilium cleanup` for ``agent``'s directories; ``sockets_in`` names other
    API/plugin sockets (an agent it can then find by its lock only)."""
    api, plugin = ((f"{sockets_in}/api.sock", f"{sockets_in}/plugin.sock") if sockets_in
                   else (agent.api_socket, agent.plugin_socket))
    return run(str(VENV_BIN / "cilium"), "-H", api, "cleanup", "--lib-dir", str(agent.lib_dir),
               "--state-dir", str(agent.state_dir), "--bpf-root", agent.bpf_root,
               "--plugin-socket", plugin, *args, check=False, input=input)


@pytest.fixture
def own_agent(dockerd, tmp_path):
    """An agent of the test's own (not started): these tests stop it and clean up after it."""
    yield from running_agent(tmp_path / "agent", start=False)


def test_kvstore_write_reaches_the_running_agent(own_agent):
    """No --kvstore: the CLI asks the agent for its store; the agent's identity
    watcher sees the write and the delete (its API answers from that cache)."""
    agent = own_agent.start()
    res = agent.cli("kvstore", "set", "--key", IDENTITY_KEY, "--value", "container:probe=cli;")
    assert res.stdout == "" and res.stderr == ""
    got = agent.cli("kvstore", "get", IDENTITY_KEY).stdout
    assert got == f"{IDENTITY_KEY} => container:probe=cli;\n"
    assert agent.cli_json("identity", "get", "54321") == {"id": 54321, "labels": ["container:probe=cli"]}
    agent.cli("kvstore", "delete", IDENTITY_KEY)
    res = agent.cli("identity", "get", "54321", check=False)
    assert res.returncode == 1 and "identity 54321 not found" in res.stderr


def test_cleanup_after_agent_stop(own_agent, tmp_path, names):
    a = own_agent
    a.start()
    net = names("cleanup")
    create_network(net, "--driver", "cilium", "--ipam-driver", "cilium")
    c1 = run_container(names("c1"), net, "-p", "18086:80")  # published: CILIUM_PRE_nat rules too
    ip1 = net_settings(c1, net)["IPAddress"]
    lxc = json.loads(a.cli("map", "get", "cilium_lxc", "-o", "json").stdout)
    assert ip1 in {e["key"]["address"] for e in lxc["cache"]}
    assert {"cilium_lxc", "cilium_policy", "cilium_ipcache"} <= {m["name"] for m in a.cli_json("map", "list")}
    prog_ids = pinned_prog_ids(defaults.bpf_prog_dir(a.bpf_root))
    # c1's veth: both directions; cilium_host: from-host (the L7 proxy's hairpin) and
    # to-overlay (egress); from-overlay is pinned, attached only in tunnel mode
    assert len(prog_ids) == 5 and len(agent_tc_filters(prog_ids)) == 4
    assert "cilium_host" in our_links() and iptables_leaks()
    assert {r.kind for r in proxyroute.find()} == {"rule", "route"}  # the L7 proxy's policy routing

    # While the agent runs: refused, whether it is found by its socket or only by its lock.
    res = cleanup_cli(a, "-f")
    assert res.returncode == 1 and f"an agent is running (it answers on {a.api_socket})" in res.stderr
    res = cleanup_cli(a, "-f", sockets_in=str(tmp_path))
    assert res.returncode == 1 and "another cilium-agent (pid" in res.stderr, res.stderr
    assert "cilium_host" in our_links() and pins(a)

    a.stop()
    # Without -f it asks; anything but "y" keeps everything.
    res = cleanup_cli(a, input="n\n")
    assert res.returncode == 0 and "You are about to remove:" in res.stdout
    assert "cilium_host" in res.stdout and "CILIUM_FORWARD" in res.stdout and "Nothing removed." in res.stdout
    assert "CILIUM_PRE_nat" in res.stdout and "CILIUM_OUTPUT_nat" in res.stdout
    assert "fwmark 0x200/0xf00 lookup 2004" in res.stdout
    assert "cilium_host" in our_links() and pins(a)

    res = cleanup_cli(a, "-f")
    assert res.returncode == 0, res.stdout + res.stderr
    assert our_links() == []
    assert agent_tc_filters(prog_ids) == []
    assert pins(a) == []
    assert iptables_leaks() == []
    assert proxyroute.find() == []
    assert not os.path.exists(os.path.join(a.state_dir, "bpf"))
    assert os.path.exists(os.path.join(a.lib_dir, "node-state.db"))  # persistent state stays
    assert cleanup_cli(a, "-f").stdout == "Nothing to clean up.\n"

    # The next agent starts from a clean host and serves a new container.
    a.start()
    assert "cilium_host" in our_links() and pins(a)
    c2 = run_container(names("c2"), net)
    ip2 = net_settings(c2, net)["IPAddress"]
    exec_(c2, "ping", "-c", "1", "-W", "2", str(a.cli_json("config")["addressing"]["ipv4"]["ip"]))
    lxc = json.loads(a.cli("map", "get", "cilium_lxc", "-o", "json").stdout)
    assert ip2 in {e["key"]["address"] for e in lxc["cache"]}


def test_cleanup_all_state(own_agent, tmp_path):
    """--all-state also removes the embedded stores (and only our files there)."""
    a = own_agent
    keep = tmp_path / "agent" / "lib" / "not-ours.txt"
    a.start()
    a.stop()
    keep.write_text("x")
    res = cleanup_cli(a, "-f", "--all-state")
    assert res.returncode == 0, res.stdout + res.stderr
    assert sorted(os.listdir(a.lib_dir)) == ["not-ours.txt"]
    assert our_links() == [] and pins(a) == [] and iptables_leaks() == []
