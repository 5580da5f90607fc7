"""`cilium config | node list | debuginfo | version | endpoint log|regenerate|disconnect`
against the real API app served by the agent's own objects minus the kernel
(tests/unit/unit_daemon.py); the same verbs against a real agent are in
tests/e2e/test_cli_ops.py."""

from __future__ import annotations

import json

from docker_cilium import logging as dclog
from docker_cilium.cli.status import print_status, unhealthy
from tests.unit.test_cli import agent, run  # noqa: F401  (the served unit daemon fixture)


def test_config_debug_is_runtime_and_validated(agent):  # noqa: F811
    sock, daemon = agent
    try:
        res = run(sock, "config", "Debug=true")
        assert res.exit_code == 0, res.output
        assert res.output.split() == ["Debug", "Enabled", "PolicyEnforcement", "default"]
        assert dclog.debug_enabled()
        # One bad value: a 400 naming the option, and nothing of the request applied.
        res = run(sock, "config", "PolicyEnforcement=always", "Debug=sometimes")
        assert res.exit_code == 1
        assert "invalid value 'sometimes' for option Debug" in res.output and "(400)" in res.output
        assert daemon.policy.enforcement == "default" and dclog.debug_enabled()
        res = run(sock, "config", "Conntrack=on")
        assert res.exit_code == 1 and "unknown or read-only option 'Conntrack'" in res.output
        cfg = json.loads(run(sock, "config", "-o", "json").output)
        assert cfg["options"] == {"Debug": "Enabled", "PolicyEnforcement": "default"}
        assert cfg["configuration"]["debug"] is True
    finally:
        dclog.set_debug(False)


def test_endpoint_log_regenerate(agent):  # noqa: F811
    sock, daemon = agent
    res = run(sock, "endpoint", "log", "1001")
    assert res.exit_code == 0, res.output
    header, *rows = res.output.splitlines()
    assert header.split() == ["Timestamp", "Status", "State", "Message"]
    assert any("waiting-for-identity" in r and "created; container labels not known yet" in r for r in rows)
    assert rows[-1].split()[1:3] == ["OK", "ready"]
    before = json.loads(run(sock, "endpoint", "log", "1001", "-o", "json").output)

    res = run(sock, "endpoint", "regenerate", "1001")
    assert res.exit_code == 0 and res.output == "Endpoint 1001 successfully regenerated\n"
    after = json.loads(run(sock, "endpoint", "log", "1001", "-o", "json").output)
    new = after[len(before):]
    assert [(e["state"], e["message"]) for e in new] == [
        ("waiting-to-regenerate", "regeneration requested (API)"),
        ("regenerating", "writing datapath maps"),
        ("ready", "regenerated to policy revision 0"),
    ]
    assert all(e["code"] == "OK" and e["timestamp"].endswith("Z") for e in new)
    assert json.loads(run(sock, "endpoint", "regenerate", "1002", "-o", "json").output) == {
        "PolicyEnforcement": "default"}

    res = run(sock, "endpoint", "regenerate", "4242")
    assert res.exit_code == 1 and "endpoint 4242 not found (404)" in res.output


def test_endpoint_disconnect(agent):  # noqa: F811
    sock, daemon = agent
    ep = daemon.endpoint(1002)
    res = run(sock, "endpoint", "disconnect", "1002")
    assert res.exit_code == 0 and res.output == "Endpoint 1002 successfully disconnected\n"
    assert [e["id"] for e in json.loads(run(sock, "endpoint", "list", "-o", "json").output)] == [1001]
    assert ep.ifname not in daemon.endpoints.links.links  # the host link is gone
    assert [(e["state"], e["message"]) for e in ep.status_model()[-2:]] == [
        ("disconnecting", "disconnected by the operator (API)"), ("disconnected", "removed")]
    res = run(sock, "endpoint", "disconnect", "1002")
    assert res.exit_code == 1 and "endpoint 1002 not found (404)" in res.output
    reply = json.loads(run(sock, "endpoint", "disconnect", "1001", "-o", "json").output)
    assert reply["id"] == 1001 and reply["state"] == "disconnected"


def test_node_list(agent):  # noqa: F811
    sock, _ = agent
    res = run(sock, "node", "list")
    assert res.exit_code == 0, res.output
    assert res.output.splitlines()[0].split() == ["Name", "IPv4", "Address", "Endpoint", "CIDR", "IPv6", "Address",
                                                  "Endpoint", "CIDR"]
    assert res.output.splitlines()[1].split() == ["unit", "192.0.2.2", "10.2.0.0/16", "f00d::a02:0:0:1",
                                                  "f00d::a02:0:0:0/96"]
    nodes = json.loads(run(sock, "node", "list", "-o", "json").output)
    assert nodes["self"] == "unit"
    assert nodes["nodes-added"][0]["primary-address"]["ipv4"] == {
        "enabled": True, "ip": "192.0.2.2", "alloc-range": "10.2.0.0/16"}


def test_debuginfo_markdown_json_and_file(agent, tmp_path):  # noqa: F811
    sock, daemon = agent
    daemon.config.bpf_root = str(tmp_path)  # nothing pinned there
    res = run(sock, "debuginfo")
    assert res.exit_code == 0, res.output
    text = res.output
    assert text.startswith("# Cilium debug information\n")
    for heading in ("Cilium version", "Kernel version", "Tool versions", "Cilium status", "Cilium runtime options",
                    "Cilium endpoint list", "Identities", "Policy", "BPF maps", "Recent agent log records"):
        assert f"\n#### {heading}\n" in text, heading
    # The unit daemon has no status: that section says so, the others are there.
    assert "Not available: the unit-test daemon has no agent status" in text
    assert "container:id=app1" in text and "PolicyEnforcement       default" in text
    info = json.loads(run(sock, "debuginfo", "-o", "json").output)
    assert info["cilium-status"] == {"error": "the unit-test daemon has no agent status"}
    assert [e["id"] for e in info["endpoint-list"]] == [1001, 1002]
    assert info["policy"]["revision"] == 0 and info["maps"] == []
    assert set(info["tool-versions"]) == {"clang", "iproute2", "tc", "iptables", "docker"}
    out = tmp_path / "report.md"
    res = run(sock, "debuginfo", "-f", str(out))
    assert res.exit_code == 0 and out.read_text().startswith("# Cilium debug information\n")
    res = run(sock, "debuginfo", "-f", str(tmp_path / "no" / "such" / "dir.md"))
    assert res.exit_code == 1 and "cannot write" in res.output


def test_version_without_agent_status(agent):  # noqa: F811
    sock, _ = agent
    res = run(sock, "version")
    assert res.exit_code == 1
    assert res.stdout.splitlines()[0].startswith("Client: 0.")
    assert res.stdout.splitlines()[1] == "Daemon: Not responding"
    res = run(None, "version", "-o", "json")
    assert res.exit_code == 1
    out = json.loads(res.output[:res.output.rindex("}") + 1])
    assert out["Daemon"] is None and out["Client"]["Version"]


STATUS = {
    "kvstore": {"state": "Failure", "msg": "etcd 127.0.0.1:1: connection refused"},
    "container-runtime": {"state": "Ok", "msg": "docker events connected"},
    "kubernetes": {"state": "Disabled"},
    "cilium": {"state": "Ok", "msg": "docker-cilium 0.1.0, up 5s"},
    "nodeMonitor": {"state": "Disabled", "msg": "no monitor reader in this agent"},
    "endpoints": 1,
    "policy": {"revision": 3, "enforcement": "always"},
    "ipam": {"ipv4": "1/65533 allocated from 10.2.0.0/16", "ipv6": "1/4294967294 allocated from f00d::a02:0:0:0/96",
             "allocations": {"10.2.0.2": "endpoint 1001", "f00d::a02:0:0:3e9": "endpoint 1001"}},
    "controllers": [
        {"name": "ct-gc", "configuration": {"interval": "30s"}, "status": {
            "success-count": 2, "failure-count": 0, "consecutive-failure-count": 0,
            "last-success-timestamp": "2026-01-01T00:00:00.000Z", "last-failure-timestamp": "",
            "last-failure-msg": ""}},
        {"name": "kvstore-health", "configuration": {"interval": "15s"}, "status": {
            "success-count": 1, "failure-count": 4, "consecutive-failure-count": 4,
            "last-success-timestamp": "2026-01-01T00:00:00.000Z",
            "last-failure-timestamp": "2026-01-01T00:01:00.000Z", "last-failure-msg": "connection refused"}},
    ],
}


def test_status_rendering_and_health(capsys):
    assert unhealthy(STATUS) == ["KVStore"]
    assert unhealthy({**STATUS, "kvstore": {"state": "Ok"}}) == []
    print_status(STATUS, all_addresses=False, all_controllers=False, verbose=False)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split(None, 2) == ["KVStore:", "Failure", "etcd 127.0.0.1:1: connection refused"]
    assert "Policy enforcement:     always (policy revision 3)" in lines
    assert "Controller Status:      1/2 healthy" in lines
    # Only the failing controller without --all-controllers, and no addresses.
    assert [line.split()[0] for line in lines[lines.index("Controller Status:      1/2 healthy") + 1:]] == [
        "Name", "kvstore-health"]
    assert not any("endpoint 1001" in line for line in lines)
    print_status(STATUS, all_addresses=True, all_controllers=True, verbose=False)
    lines = capsys.readouterr().out.splitlines()
    assert "  10.2.0.2              endpoint 1001" in lines and "  f00d::a02:0:0:3e9     endpoint 1001" in lines
    ctrl = lines[lines.index("Controller Status:      1/2 healthy") + 1:]
    assert [line.split()[0] for line in ctrl] == ["Name", "ct-gc", "kvstore-health"]
    assert ctrl[2].split()[-3:] == ["4", "connection", "refused"] and "no error" in ctrl[1]
