"""The operator's verbs against a real agent, dockerd and kernel: `cilium status`,
`config`, `endpoint log|regenerate|disconnect`, `node list`, `debuginfo`,
`version`, each for its table and its JSON."""

from __future__ import annotations

import json
import re
import socket
import uuid

import pytest

from docker_cilium import defaults
from docker_cilium.datapath.maps.configmap import CFG_F_DEBUG
from docker_cilium.datapath.maps.registry import DatapathMaps
from tests.e2e.conftest import create_network, exec_, net_settings, run_container
from tests.helpers import docker, run, wait_until


@pytest.fixture(scope="module")
def app(agent):
    """(container, endpoint model) of one labelled container on a cilium network, ready."""
    suffix = uuid.uuid4().hex[:6]
    net = f"dct-ops-{suffix}"
    create_network(net, "--driver", "cilium", "--ipam-driver", "cilium")
    name = f"dct-ops-app-{suffix}"
    run_container(name, net, "-l", "id=ops")
    ip = net_settings(name, net)["IPAddress"]

    def ready():
        ep = agent.cli_json("endpoint", "get", f"container-name:{name}")
        return ep if ep["state"] == "ready" and "container:id=ops" in ep["labels"]["effective"] else None
    yield name, net, wait_until(ready, what="the ops container's endpoint ready with its labels"), ip


def lines(text: str) -> list[str]:
    return text.splitlines()


def field(out: str, name: str) -> str:
    """The value of ``Name:`` in `cilium status` output."""
    for line in lines(out):
        if line.startswith(name + ":"):
            return line[len(name) + 1:].strip()
    raise AssertionError(f"no {name} line in:\n{out}")


def test_status_table_and_json(agent, app):
    _, _, ep, ip = app
    res = agent.cli("status")
    assert res.returncode == 0
    out = res.stdout
    assert field(out, "KVStore").split()[0] == "Ok"
    assert field(out, "Kubernetes") == "Disabled"
    assert field(out, "Cilium").startswith("Ok   docker-cilium ")
    assert field(out, "NodeMonitor").split()[0] in ("Disabled", "Ok")
    assert field(out, "Policy enforcement").startswith("default (policy revision ")
    assert field(out, "IPv4 address pool").split("/")[0].isdigit()
    healthy = wait_until(lambda: re.fullmatch(r"(\d+)/\1 healthy", field(agent.cli("status").stdout,
                                                                         "Controller Status")),
                         what="every controller healthy").group(0)
    assert f"  {ip} " not in out  # addresses only with --all-addresses

    out = agent.cli("status", "--all-addresses").stdout
    assert any(line.split() == [ip, "endpoint", str(ep["id"])] for line in lines(out)), out
    out = agent.cli("status", "--all-controllers").stdout
    table = lines(out)[lines(out).index(f"Controller Status:      {healthy}") + 1:]
    assert table[0].split() == ["Name", "Last", "success", "Last", "error", "Count", "Message"]
    rows = {row.split()[0]: row for row in table[1:]}
    assert {"ct-gc", "identity-gc", "kvstore-health"} <= set(rows) and len(rows) == int(healthy.split("/")[0])
    assert rows["kvstore-health"].split()[2:] == ["ago", "never", "0", "no", "error"]
    # The two runs are a moment apart, so "Ns ago" may tick between them; compare the rest.
    def ages_out(rows: list[str]) -> list[str]:
        return [re.sub(r"\b\d+[a-z]+ ago\b", "<age> ago", row) for row in rows]
    assert ages_out(lines(agent.cli("status", "--verbose").stdout)[-4:]) == ages_out(lines(out)[-4:])

    st = agent.cli_json("status")
    assert st["kvstore"]["state"] == "Ok" and st["kubernetes"] == {"state": "Disabled"}
    assert st["ipam"]["allocations"][ip] == f"endpoint {ep['id']}"
    ctrl = {c["name"]: c for c in st["controllers"]}
    assert ctrl["kvstore-health"]["status"]["success-count"] >= 1
    assert ctrl["kvstore-health"]["configuration"] == {"interval": "15s"}
    assert st["cilium-version"]["Version"] == agent.cli_json("version")["Client"]["Version"]


def _debug_records(agent, after: str = "") -> list[dict]:
    """Debug-level records in the agent's log (JSON lines), after the last line containing ``after``."""
    text = agent.log_path.read_text()
    if after:
        text = text[text.rindex(after):].split("\n", 1)[1]
    records = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    return [r for r in records if r.get("level") == "debug"]


def _datapath_debug(agent) -> bool:
    """CFG_F_DEBUG in the agent's pinned cilium_config (what gates the datapath's debug events)."""
    maps = DatapathMaps.open(defaults.bpf_pin_root(agent.bpf_root))
    try:
        return bool(maps.config.get().flags & CFG_F_DEBUG)
    finally:
        maps.close()


def test_config_runtime_options_persist_across_restart(agent, app):
    _, _, ep, _ = app
    assert _debug_records(agent), "the agent runs with --debug: its log has debug records (positive control)"
    assert _datapath_debug(agent)
    try:
        res = agent.cli("config", "Debug=false", "PolicyEnforcement=always")
        assert [line.split() for line in lines(res.stdout)] == [["Debug", "Disabled"], ["MonitorAggregation", "medium"],
                                                           ["PolicyEnforcement", "always"]]
        assert not _datapath_debug(agent)
        # Live: a regeneration logs its state changes at debug level, no longer written.
        agent.cli("endpoint", "regenerate", str(ep["id"]))
        assert _debug_records(agent, after='"option": "Debug"') == []
        bad = agent.cli("config", "Debug=perhaps", check=False)
        assert bad.returncode == 1
        assert "invalid value 'perhaps' for option Debug" in bad.stderr and "(400)" in bad.stderr
        assert agent.cli_json("config")["options"] == {"Debug": "Disabled", "MonitorAggregation": "medium",
                                                        "PolicyEnforcement": "always"}

        agent.stop()  # started with --debug again: the saved change wins over the unchanged flag
        agent.start()
        cfg = agent.cli_json("config")
        assert cfg["options"] == {"Debug": "Disabled", "MonitorAggregation": "medium",
                                  "PolicyEnforcement": "always"}
        assert cfg["configuration"]["debug"] is False and cfg["policy-enforcement"] == "always"
        assert not _datapath_debug(agent)
        agent.cli("endpoint", "regenerate", str(ep["id"]))
        assert _debug_records(agent, after='"config.restored"') == []
    finally:
        agent.cli("config", "Debug=true", "PolicyEnforcement=default")
    assert agent.cli_json("config")["options"] == {"Debug": "Enabled", "MonitorAggregation": "medium",
                                                      "PolicyEnforcement": "default"}
    assert _datapath_debug(agent)


def _bpf_filters(ifname: str) -> str:
    return run("tc", "filter", "show", "dev", ifname, "ingress").stdout


def test_endpoint_log_and_regenerate_repairs_a_detached_program(agent, app):
    _, _, ep, _ = app
    eid, ifname = str(ep["id"]), ep["interface-name"]
    res = agent.cli("endpoint", "log", eid)
    header, *rows = lines(res.stdout)
    assert header.split() == ["Timestamp", "Status", "State", "Message"]
    assert any(r.split()[1:3] == ["OK", "ready"] for r in rows)
    before = agent.cli_json("endpoint", "log", eid)

    run("tc", "filter", "del", "dev", ifname, "ingress")
    assert "bpf" not in _bpf_filters(ifname)
    res = agent.cli("endpoint", "regenerate", eid)
    assert res.stdout == f"Endpoint {eid} successfully regenerated\n"
    assert "bpf_lxc.o:[from_container] direct-action" in _bpf_filters(ifname)
    new = agent.cli_json("endpoint", "log", eid)[len(before):]
    assert [(e["state"], e["code"]) for e in new] == [
        ("waiting-to-regenerate", "OK"), ("regenerating", "OK"), ("ready", "OK")]
    assert new[0]["message"] == "regeneration requested (API)"
    assert new[-1]["message"].startswith("regenerated to policy revision ")
    assert agent.cli_json("endpoint", "regenerate", eid) == {"PolicyEnforcement": "default"}
    assert agent.cli_json("endpoint", "log", eid)[-1]["state"] == "ready"

    res = agent.cli("endpoint", "log", "65000", check=False)
    assert res.returncode == 1 and "endpoint 65000 not found (404)" in res.stderr


def test_endpoint_disconnect(agent, app):
    _, net, _, _ = app
    names = [f"dct-ops-gone{i}-{uuid.uuid4().hex[:6]}" for i in (1, 2)]
    eps = []
    for name in names:
        run_container(name, net)
        eps.append(wait_until(lambda: agent.cli_json("endpoint", "get", f"container-name:{name}"),
                              what="its endpoint"))
        exec_(name, "ping", "-c", "1", "-W", "2", eps[-1]["addressing"]["ipv4"])  # its own address answers

    res = agent.cli("endpoint", "disconnect", str(eps[0]["id"]))
    assert res.stdout == f"Endpoint {eps[0]['id']} successfully disconnected\n"
    reply = agent.cli_json("endpoint", "disconnect", str(eps[1]["id"]))
    assert reply["id"] == eps[1]["id"] and reply["state"] == "disconnected"
    left = [e["id"] for e in agent.cli_json("endpoint", "list")]
    bpf_endpoints = agent.cli("bpf", "endpoint", "list").stdout
    for name, ep in zip(names, eps):
        ip = ep["addressing"]["ipv4"]
        assert ep["id"] not in left and ip not in bpf_endpoints
        assert run("ip", "link", "show", ep["interface-name"], check=False).returncode != 0
        assert ip not in exec_(name, "ip", "-4", "addr").stdout  # the container's interface went with it
    res = agent.cli("endpoint", "disconnect", str(eps[0]["id"]), check=False)
    assert res.returncode == 1 and f"endpoint {eps[0]['id']} not found (404)" in res.stderr
    docker("rm", "-f", *names)  # Docker's own delete of the endpoints still works


def test_node_list(agent):
    cfg = agent.cli_json("config")
    out = lines(agent.cli("node", "list").stdout)
    assert out[0].split() == ["Name", "IPv4", "Address", "Endpoint", "CIDR", "IPv6", "Address", "Endpoint", "CIDR"]
    assert out[1].split() == [socket.gethostname(), cfg["addressing"]["node-ip"],
                              cfg["addressing"]["ipv4"]["alloc-range"], cfg["addressing"]["ipv6"]["ip"],
                              cfg["addressing"]["ipv6"]["alloc-range"]]
    nodes = agent.cli_json("node", "list")
    assert nodes["self"] == socket.gethostname() and len(nodes["nodes-added"]) == 1


def test_debuginfo_markdown_json_and_file(agent, app, tmp_path):
    _, _, ep, ip = app
    text = agent.cli("debuginfo").stdout
    assert text.startswith("# Cilium debug information\n")
    status = text[text.index("#### Cilium status"):text.index("#### Cilium runtime options")]
    assert "KVStore:" in status and "Controller Status:" in status
    assert ip in text[text.index("#### Cilium endpoint list"):text.index("#### Identities")]
    maps = text[text.index("#### BPF maps"):text.index("#### Recent agent log records")]
    assert any(line.split()[:1] == ["cilium_lxc"] for line in lines(maps))

    info = agent.cli_json("debuginfo")
    by_name = {m["name"]: m for m in info["maps"]}
    assert by_name["cilium_lxc"]["entries"] >= 1 and by_name["cilium_lxc"]["max-entries"] > 0
    assert ep["id"] in [e["id"] for e in info["endpoint-list"]]
    assert info["cilium-status"]["kvstore"]["state"] == "Ok"
    assert info["tool-versions"]["clang"].startswith(("Debian clang", "clang", "Ubuntu clang"))
    assert info["agent-log"] and all("event" in json.loads(line) for line in info["agent-log"])
    assert info["kernel-version"].startswith("Linux ")
    out = tmp_path / "debuginfo.json"
    res = agent.cli("debuginfo", "-o", "json", "-f", str(out))
    assert res.stdout == "" and json.loads(out.read_text())["cilium-version"] == info["cilium-version"]


def test_version(agent):
    out = lines(agent.cli("version").stdout)
    assert out[0].startswith("Client: 0.") and out[1].startswith("Daemon: 0.")
    data = agent.cli_json("version")
    assert data["Client"]["Version"] == data["Daemon"]["Version"]
