"""The `cilium` CLI against the real API app on a private Unix socket, served by
the agent's own objects minus the kernel (tests/unit/unit_daemon.py), plus the
bpf verbs against fake maps."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass

import pytest
from aiohttp import web
from click.testing import CliRunner

from docker_cilium.api.app import build_app
from docker_cilium.cli import bpf as bpf_cli
from docker_cilium.cli.client import Client
from docker_cilium.cli.main import cli
from docker_cilium.datapath.maps.ctmap import CTEntry
from docker_cilium.datapath.maps.ipcache import IPCacheEntry
from docker_cilium.datapath.maps.lxcmap import EndpointInfo
from docker_cilium.datapath.maps.policymap import PolicyStat
from tests.unit.unit_daemon import UnitDaemon

POLICY = [{
    "endpointSelector": {"matchLabels": {"id": "app1"}},
    "ingress": [{"fromEndpoints": [{"matchLabels": {"id": "app2"}}],
                 "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}]}]}],
    "labels": ["name=web"],
}]


@pytest.fixture
def agent():
    """(socket path, daemon): the API app served from a background loop."""
    tmp = tempfile.mkdtemp(prefix="dc-cli-", dir="/tmp")  # short: sun_path is 108 bytes
    path = f"{tmp}/cilium.sock"
    loop = asyncio.new_event_loop()
    started = threading.Event()
    holder: dict = {}

    def serve() -> None:
        asyncio.set_event_loop(loop)
        holder["daemon"] = loop.run_until_complete(UnitDaemon(tmp).start())
        holder["runner"] = runner = web.AppRunner(build_app(holder["daemon"]))
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.UnixSite(runner, path).start())
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert started.wait(10)
    daemon = holder["daemon"]
    yield path, daemon
    asyncio.run_coroutine_threadsafe(holder["runner"].cleanup(), loop).result(10)
    asyncio.run_coroutine_threadsafe(daemon.stop(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()
    shutil.rmtree(tmp, ignore_errors=True)


def run(sock: str | None, *args: str, input: str | None = None):
    argv = (["-H", sock] if sock else ["-H", "/tmp/dc-no-such-agent.sock"]) + list(args)
    return CliRunner().invoke(cli, argv, input=input, catch_exceptions=False)


@pytest.fixture
def policy_file(tmp_path):
    p = tmp_path / "policy.json"
    p.write_text(json.dumps(POLICY))
    return str(p)


def test_policy_import_get_delete(agent, policy_file):
    sock, daemon = agent
    res = run(sock, "policy", "import", policy_file)
    assert res.exit_code == 0, res.output
    assert res.output == "Revision: 1\n"
    res = run(sock, "policy", "get")
    assert res.output.endswith("Revision: 1\n")
    assert json.loads(res.output.rsplit("Revision:", 1)[0])[0]["labels"]
    res = run(sock, "policy", "get", "name=web", "-o", "json")
    assert json.loads(res.output)["revision"] == 1
    res = run(sock, "policy", "import", "-", input=json.dumps(POLICY))
    assert res.output == "Revision: 2\n"
    res = run(sock, "policy", "delete")
    assert res.exit_code == 2 and "--all" in res.output
    res = run(sock, "policy", "delete", "name=web")
    assert res.output == "Revision: 3\n"
    assert run(sock, "policy", "delete", "--all").output == "Revision: 3\n"  # nothing left to delete


def test_policy_import_invalid(agent, tmp_path):
    sock, daemon = agent
    bad = tmp_path / "bad.json"
    bad.write_text('[{"endpointSelector": {}, "ingress": [{"fromEntities": ["moon"]}]}]')
    res = run(sock, "policy", "import", str(bad))
    assert res.exit_code == 1
    assert "[0].ingress[0].fromEntities[0]" in res.output
    assert daemon.policy.revision == 0
    res = run(sock, "policy", "import", str(tmp_path / "missing.json"))
    assert res.exit_code == 1 and "cannot read" in res.output


def test_policy_validate_is_local(policy_file, tmp_path):
    res = run(None, "policy", "validate", policy_file)
    assert res.exit_code == 0 and res.output == "All policy elements are valid.\n"
    bad = tmp_path / "bad.json"
    bad.write_text('[{"ingress": []}]')
    res = run(None, "policy", "validate", str(bad))
    assert res.exit_code == 1
    assert "endpointSelector" in res.output and str(bad) in res.output


def test_policy_trace(agent, policy_file):
    sock, daemon = agent
    run(sock, "policy", "import", policy_file)
    res = run(sock, "policy", "trace", "-s", "container:id=app2", "-d", "container:id=app1", "--dport", "80/TCP")
    assert res.exit_code == 0, res.output
    assert res.output.rstrip().endswith("Final verdict: ALLOWED")
    assert res.output.count("Final verdict") == 1
    res = run(sock, "policy", "trace", "--src-identity", "257", "--dst-endpoint", "1001", "--dport", "81")
    assert res.exit_code == 0 and res.output.rstrip().endswith("Final verdict: DENIED")
    res = run(sock, "policy", "trace", "--src-endpoint", "1002", "--dst-identity", "256", "--dport", "80",
              "-o", "json")
    assert json.loads(res.output)["verdict"] == "allowed"
    res = run(sock, "policy", "trace", "-s", "a")
    assert res.exit_code == 2
    res = run(sock, "policy", "trace", "-s", "a", "-d", "b", "--dport", "99999")
    assert res.exit_code == 1 and "out of range" in res.output and "(400)" in res.output


def test_policy_wait(agent, monkeypatch):
    """`policy wait` polls until every endpoint enforces the revision: one that
    is imported while it waits ends the wait, one that never comes times out."""
    sock, daemon = agent
    assert run(sock, "policy", "wait", "0").exit_code == 0
    polls: list[int] = []  # endpoint revisions seen by each poll
    polled_twice = threading.Event()
    request = Client.request

    def counting(self, method, path, *args, **kwargs):
        reply = request(self, method, path, *args, **kwargs)
        if (method, path) == ("GET", "/endpoint"):
            polls.append(min(ep["policy"]["revision"] for ep in reply))
            if len(polls) >= 2:
                polled_twice.set()
        return reply

    def import_later() -> None:
        assert polled_twice.wait(10)
        request(Client(sock), "PUT", "/policy", body=POLICY)

    monkeypatch.setattr(Client, "request", counting)
    importer = threading.Thread(target=import_later)
    importer.start()
    res = run(sock, "policy", "wait", "1", "--max-wait-time", "10s", "--sleep-time", "20ms")
    importer.join(10)
    assert res.exit_code == 0, res.output
    assert res.output == "Waiting for endpoints to run policy revision 1: 2/2\nDone.\n"
    assert polls[:2] == [0, 0] and polls[-1] == 1  # it waited through polls that saw revision 0
    assert daemon.policy.revision == 1

    polls.clear()
    t0 = time.monotonic()
    res = run(sock, "policy", "wait", "7", "--max-wait-time", "300ms", "--sleep-time", "50ms")
    assert res.exit_code == 1 and "timeout after 300ms" in res.output and "0/2" in res.output
    assert time.monotonic() - t0 >= 0.3 and len(polls) >= 3  # it polled for the whole 300 ms
    assert run(sock, "policy", "wait", "1", "--max-wait-time", "soon").exit_code == 2


def test_identity_list_and_get(agent):
    sock, _ = agent
    res = run(sock, "identity", "list")
    lines = res.output.splitlines()
    assert lines[0].split() == ["ID", "LABELS"]
    assert any(l.split() == ["2", "reserved:world"] for l in lines)
    assert any(l.split() == ["256", "container:id=app1"] for l in lines)
    res = run(sock, "identity", "list", "id=app2", "-o", "json")
    assert json.loads(res.output) == [{"id": 257, "labels": ["container:id=app2"]}]
    assert json.loads(run(sock, "identity", "get", "1", "-o", "json").output)["labels"] == ["reserved:host"]
    res = run(sock, "identity", "get", "4242")
    assert res.exit_code == 1 and "identity 4242 not found (404)" in res.output


def test_endpoint_list_labels_config(agent):
    sock, daemon = agent
    res = run(sock, "endpoint", "list")
    header = res.output.splitlines()[0]
    for col in ("ENDPOINT", "POLICY (ingress) ENFORCEMENT", "IDENTITY", "LABELS (source:key[=value])", "IPv4",
                "STATUS"):
        assert col in header
    assert "container:id=app1" in res.output
    res = run(sock, "endpoint", "labels", "1001")
    assert res.output.splitlines()[1].split() == ["container:id=app1", "Orchestration-Identity"]
    res = run(sock, "endpoint", "labels", "1001", "--add", "container:tier=db", "-o", "json")
    assert json.loads(res.output)["user"] == ["container:tier=db"]
    res = run(sock, "endpoint", "labels", "1001", "--delete", "container:tier=db")
    assert "tier=db" not in res.output
    res = run(sock, "endpoint", "config", "1001")
    assert res.output.split() == ["PolicyEnforcement", "default"]
    res = run(sock, "endpoint", "config", "1001", "PolicyEnforcement=always")
    assert res.exit_code == 0 and "updated" in res.output
    assert daemon.endpoint(1001).policy_enforcement == "always"
    res = run(sock, "endpoint", "config", "1001", "PolicyEnforcement=maybe")
    assert res.exit_code == 1 and "must be one of default, always, never" in res.output
    res = run(sock, "endpoint", "config", "1001", "PolicyEnforcement")
    assert res.exit_code == 2 and "Key=Value" in res.output
    res = run(sock, "endpoint", "labels", "999")
    assert res.exit_code == 1 and "endpoint 999 not found (404)" in res.output


def test_config(agent):
    sock, daemon = agent
    res = run(sock, "config")
    assert [line.split() for line in res.output.splitlines()[:2]] == [["Debug", "Disabled"],
                                                                     ["PolicyEnforcement", "default"]]
    res = run(sock, "config", "PolicyEnforcement=always")
    assert res.exit_code == 0 and res.output.split() == ["Debug", "Disabled", "PolicyEnforcement", "always"]
    assert daemon.policy.enforcement == "always"
    res = run(sock, "config", "Debug=maybe")
    assert res.exit_code == 1 and "invalid value 'maybe' for option Debug" in res.output
    assert json.loads(run(sock, "config", "-o", "json").output)["policy-enforcement"] == "always"


def test_agent_not_reachable():
    res = run(None, "policy", "get")
    assert res.exit_code == 1
    assert "cannot reach the cilium agent" in res.output and "is the agent running? (socket " in res.output


# --- bpf verbs (fake maps; the real ones need root: tests/privileged) ----------------
@dataclass
class _Part:
    items: object

    def dump(self, *args):
        if isinstance(self.items, list) and args and args[0] is not None:
            return [s for s in self.items if s.lxc_id == args[0]]
        return self.items

    def flush(self):
        n = len(self.items)
        self.items = []
        return n


class FakeMaps:
    def __init__(self):
        self.policy = _Part([
            PolicyStat(1001, 257, 0, 80, 6, 0, False, 3, 180),
            PolicyStat(1001, 0, 1, 0, 0, 0, False, 1, 60),
            PolicyStat(1002, 2, 0, 0, 0, 0, True, 0, 0),
        ])
        self.ct = _Part([CTEntry(4, "10.2.0.3", "10.2.0.2", 43210, 80, 6, 0, 5, 400, 10**9, 0, 257)])
        self.endpoints = _Part([EndpointInfo(101, 1001, 256, "02:00:00:00:00:01", "02:00:00:00:00:02",
                                             "10.2.0.2", "f00d::a02:0:0:3e9", True, False)])
        self.ipcache = _Part({"10.2.0.2/32": IPCacheEntry("10.2.0.2/32", 256),
                              "0.0.0.0/0": IPCacheEntry("0.0.0.0/0", 2)})
        self.closed = False

    def close(self):
        self.closed = True


@pytest.fixture
def fake_maps(monkeypatch):
    maps = FakeMaps()
    roots = []
    monkeypatch.setattr(bpf_cli, "open_maps", lambda root: roots.append(root) or maps)
    return maps, roots


def test_bpf_policy_get(agent, fake_maps):
    sock, _ = agent
    maps, roots = fake_maps
    res = run(sock, "bpf", "policy", "get", "1001", "--bpf-root", "/tmp/pins")
    assert res.exit_code == 0, res.output
    assert roots == ["/tmp/pins/tc/globals"]
    lines = res.output.splitlines()
    assert lines[0].split()[:2] == ["DIRECTION", "LABELS"] and "PROXY PORT" in lines[0]
    assert lines[1].split() == ["Ingress", "container:id=app2", "80/TCP", "NONE", "180", "3"]
    assert lines[2].split() == ["Egress", "reserved:unknown", "ANY", "NONE", "60", "1"]
    res = run(None, "bpf", "policy", "get", "1001")  # agent down: numbers
    assert res.output.splitlines()[0].split()[:2] == ["DIRECTION", "IDENTITY"]
    assert res.output.splitlines()[1].split()[1] == "257"
    res = run(sock, "bpf", "policy", "get", "--all")
    assert "Endpoint 1001:" in res.output and "Endpoint 1002:" in res.output and "Ingress (deny)" in res.output
    assert run(sock, "bpf", "policy", "get").exit_code == 2
    out = json.loads(run(sock, "bpf", "policy", "get", "1001", "-o", "json").output)
    assert out[0]["labels"] == ["container:id=app2"] and out[0]["packets"] == 3
    assert maps.closed


def test_bpf_ct_endpoint_ipcache(fake_maps, monkeypatch):
    maps, roots = fake_maps
    monkeypatch.setenv("CILIUM_BPF_ROOT", "/tmp/envpins")
    res = run(None, "bpf", "ct", "list", "global")
    assert res.exit_code == 0, res.output
    assert res.output.startswith("TCP OUT 10.2.0.3:43210 -> 10.2.0.2:80 expires=")
    assert "packets=5 bytes=400" in res.output and "src_identity=257" in res.output
    assert roots == ["/tmp/envpins/tc/globals"]
    assert run(None, "bpf", "ct", "list", "local").exit_code == 2
    res = run(None, "bpf", "ct", "flush", "global")
    assert res.output.startswith("Flushed 1 entries")
    assert run(None, "bpf", "ct", "list", "global").output == ""
    res = run(None, "bpf", "endpoint", "list")
    lines = res.output.splitlines()
    assert lines[0].split() == ["IP", "ADDRESS", "LOCAL", "ENDPOINT", "INFO"]
    assert lines[1].startswith("10.2.0.2 ") and "id=1001 ifindex=101 mac=02:00:00:00:00:01" in lines[1]
    assert "flags=0x1" in lines[1] and len(lines) == 3
    res = run(None, "bpf", "ipcache", "list")
    lines = res.output.splitlines()
    assert lines[0].split() == ["IP", "PREFIX/ADDRESS", "IDENTITY"]
    assert lines[1].split() == ["0.0.0.0/0", "2"] and lines[2].split() == ["10.2.0.2/32", "256"]
    assert json.loads(run(None, "bpf", "ipcache", "list", "-o", "json").output)[1]["identity"] == 256


def test_bpf_proxy_list_shows_only_redirected_connections(fake_maps):
    maps, _roots = fake_maps
    assert run(None, "bpf", "proxy", "list").output == "No connections redirected to the proxy\n"
    far = 10**9
    maps.ct.items += [CTEntry(4, "10.2.0.3", "10.2.0.2", 40000, 80, 6, 0, 9, 900, far, 0x10 | 0x20, 257),
                      CTEntry(6, "f00d::1", "f00d::2", 40001, 8080, 6, 1, 1, 60, far, 0x10, 1)]
    res = run(None, "bpf", "proxy", "list")
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0].split()[:4] == ["PROTO", "SOURCE", "ORIGINAL", "DESTINATION"] and len(lines) == 3
    assert lines[1].split()[:6] == ["TCP", "10.2.0.3:40000", "10.2.0.2:80", "OUT", "257", "0x30"]
    assert lines[2].split()[:6] == ["TCP", "[f00d::1]:40001", "[f00d::2]:8080", "IN", "1", "0x10"]
    out = json.loads(run(None, "bpf", "proxy", "list", "-o", "json").output)
    assert [(e["daddr"], e["dport"]) for e in out] == [("10.2.0.2", 80), ("f00d::2", 8080)]


def test_bpf_maps_missing():
    res = run(None, "bpf", "endpoint", "list", "--bpf-root", "/tmp/dc-no-such-pins")
    assert res.exit_code == 1
    assert "cannot open BPF maps under /tmp/dc-no-such-pins" in res.output


@pytest.mark.parametrize("err, hint", [
    (errno.EPERM, "run as root"),
    (errno.EACCES, "run as root"),
    (errno.ENOENT, "is the agent's datapath loaded?"),
    (errno.EINVAL, None),
])
def test_bpf_open_failure_hint_by_errno(monkeypatch, err, hint):
    def fail(root):
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr(bpf_cli, "open_maps", fail)
    res = run(None, "bpf", "endpoint", "list", "--bpf-root", "/tmp/pins")
    assert res.exit_code == 1 and "cannot open BPF maps under /tmp/pins/tc/globals" in res.output
    hints = ("run as root", "is the agent's datapath loaded?")
    assert [h for h in hints if h in res.output] == ([hint] if hint else [])
