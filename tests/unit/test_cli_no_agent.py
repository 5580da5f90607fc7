"""Every `cilium` verb with no agent behind its socket: one line naming the
socket, a non-zero exit, never a traceback.

The verbs are found by walking the command tree, so a verb added later is
covered without being listed here; each runs as a real process (the console
entry point), and stdout/stderr are checked as a user would see them.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import threading
from typing import Iterator

import click
import pytest

from docker_cilium.cli.main import cli

NO_SOCKET = "/tmp/dc-no-agent-here/cilium.sock"
POLICY = '[{"endpointSelector": {"matchLabels": {"id": "app1"}}, "labels": ["name=web"]}]'

# Verbs that never ask the agent (they act on the host or the store directly,
# or only print): checked below with their own failure, or not run at all.
DIRECT = {
    ("cleanup",),      # changes the host: tests/e2e/test_cleanup.py
    ("completion",),   # prints a script
    ("version",),      # the client's version
    ("policy", "validate"),
}
DIRECT_PREFIXES = {("bpf",), ("kvstore",)}
# Arguments a verb needs to get as far as the API (default: "1" per required one).
ARGS = {
    ("policy", "import"): ["{policy}"],
    ("policy", "delete"): ["--all"],
    ("policy", "trace"): ["--src", "id=a", "--dst", "id=b"],
    ("prefilter", "update"): ["--cidr", "192.0.2.0/24"],
    ("prefilter", "delete"): ["--cidr", "192.0.2.0/24"],
    ("service", "delete"): ["1"],
    ("service", "update"): ["--id", "1", "--frontend", "10.96.0.10:80"],
}


def leaf_commands(cmd: click.Command, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], click.Command]]:
    if isinstance(cmd, click.Group):
        ctx = click.Context(cmd)  # list_commands/get_command: the root group loads its verbs lazily
        return [leaf for name in sorted(cmd.list_commands(ctx))
                for leaf in leaf_commands(cmd.get_command(ctx, name), path + (name,))]  # type: ignore[arg-type]
    return [(path, cmd)]


def _args(path: tuple[str, ...], cmd: click.Command) -> list[str]:
    if path in ARGS:
        return list(ARGS[path])
    out: list[str] = []
    for p in cmd.params:
        if p.required:
            out += ([p.opts[0]] if isinstance(p, click.Option) else []) + ["1"]
    return out


AGENT_VERBS = [path for path, _ in leaf_commands(cli)
               if path not in DIRECT and path[:1] not in DIRECT_PREFIXES]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "docker_cilium.cli.main", *args],
                          capture_output=True, text=True, timeout=60)


def test_the_walk_finds_the_verbs():
    """The parametrization below is not vacuous: it holds the API verbs we know."""
    assert {("status",), ("map", "list"), ("map", "get"), ("endpoint", "list"), ("identity", "get"),
            ("policy", "import"), ("config",)} <= set(AGENT_VERBS)


@pytest.mark.parametrize("path", AGENT_VERBS, ids=" ".join)
def test_agent_verb_without_agent(path, tmp_path):
    cmd = dict(leaf_commands(cli))[path]
    policy = tmp_path / "policy.json"
    policy.write_text(POLICY)
    args = [a.format(policy=policy) for a in _args(path, cmd)]
    res = run("-H", NO_SOCKET, *path, *args)
    assert res.returncode == 1, (res.returncode, res.stdout, res.stderr)
    assert "Traceback" not in res.stderr + res.stdout
    assert res.stdout == ""
    assert res.stderr.strip().splitlines() == [
        f"Error: cannot reach the cilium agent: No such file or directory: is the agent running? (socket {NO_SOCKET})"]


@pytest.mark.parametrize("verb, expect", [
    (("bpf", "endpoint", "list", "--bpf-root", "/tmp/dc-no-agent-here"),
     "Error: cannot open BPF maps under /tmp/dc-no-agent-here/tc/globals"),
    (("kvstore", "get", "cilium", "--lib-dir", "/tmp/dc-no-agent-here"),
     "Error: no embedded kvstore at /tmp/dc-no-agent-here/kvstore.db"),
])
def test_direct_verbs_without_agent(verb, expect):
    """Direct verbs need no agent; what they miss instead is said in one line too."""
    res = run("-H", NO_SOCKET, *verb)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(expect), res.stderr


def test_permission_denied_names_the_socket(tmp_path):
    """A socket the user may not open is not 'is the agent running?': it says why."""
    from docker_cilium.cli.client import Client

    err = Client(str(tmp_path / "s.sock")).unreachable(PermissionError(13, "Permission denied"))
    assert str(err) == (f"cannot reach the cilium agent: permission denied (socket {tmp_path}/s.sock): "
                        "run as root or as a member of the socket's group")


@contextlib.contextmanager
def one_shot_agent(path: str, reply: bytes) -> Iterator[None]:
    """A fake agent on ``path`` for one request: reads it, sends ``reply``, hangs up."""
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(1)

    def serve() -> None:
        conn, _ = srv.accept()
        conn.recv(65536)
        conn.sendall(reply)
        conn.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield
    finally:
        t.join(10)
        srv.close()


def test_agent_hangs_up_mid_request(tmp_path):
    """An agent that accepts and closes without answering: one line, exit 1."""
    path = str(tmp_path / "c.sock")
    with one_shot_agent(path, b""):
        res = run("-H", path, "endpoint", "list")
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines() == [
        f"Error: the cilium agent did not answer GET /v1/endpoint: Remote end closed connection without "
        f"response (socket {path})"]


@pytest.mark.parametrize("reply, expect", [
    (b"", "the cilium agent did not answer GET /v1/monitor: Remote end closed connection without response"),
    (b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"1f\r\n" + b'{"type": "agent", "n": "first"}' + b"\r\n",
     "the cilium agent ended the stream GET /v1/monitor: "),
], ids=["before-answer", "mid-stream"])
def test_agent_hangs_up_on_monitor(tmp_path, reply, expect):
    """`cilium monitor` whose agent goes away (stopped, killed, restarted):
    what came is printed, then one line saying the stream ended, exit 1."""
    path = str(tmp_path / "m.sock")
    with one_shot_agent(path, reply):
        res = run("-H", path, "monitor", "-j")
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
    assert res.stdout == ('{"type": "agent", "n": "first"}' if reply else "")
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: " + expect) and lines[0].endswith(f"(socket {path})"), lines
