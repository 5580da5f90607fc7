"""Only root reaches the agent and what it keeps (issue 11, "Security").

A real agent with its own sockets and state directories under a directory
every user may search (as /run and /var/lib are): only the sockets' and
files' own modes stand between another local user and the agent. The
unprivileged user is a forked child that dropped to nobody (setgroups,
setgid, setuid 65534) before stat() and connect().
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import stat
import tempfile
from pathlib import Path

import pytest

from tests.e2e.conftest import cleanup_bpf, cleanup_host, iptables_leaks
from tests.e2e.test_plugin_input import post
from tests.helpers import Agent

NOBODY = 65534


def probe_as(uid: int, path: str) -> tuple[int, int]:
    """(errno of stat(path), errno of connect(path)) in a child running as
    uid (and gid uid, no supplementary groups); 0 = success."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: no pytest machinery, only syscalls, then _exit
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            results = []
            for attempt in (lambda: os.stat(path),
                            lambda: socket.socket(socket.AF_UNIX, socket.SOCK_STREAM).connect(path)):
                try:
                    attempt()
                    results.append(0)
                except OSError as e:
                    results.append(e.errno)
            os.write(w, json.dumps(results).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        out = f.read()
    os.waitpid(pid, 0)
    st, conn = json.loads(out)
    return st, conn


@pytest.fixture(scope="module")
def agent(dockerd):
    """An agent whose lib and state directories pre-exist 0755 (what
    `mkdir -p` under umask 022 leaves, as scripts/plugin.sh does), its two
    sockets beside them in a searchable directory."""
    workdir = Path(tempfile.mkdtemp(prefix="dct-sec-", dir="/run"))
    os.chmod(workdir, 0o755)
    for d in ("lib", "state"):
        (workdir / d).mkdir(mode=0o755)
        os.chmod(workdir / d, 0o755)
    cleanup_host()
    a = Agent(workdir, plugin_socket=str(workdir / "plugin.sock"))
    try:
        a.start()
        yield a
    finally:
        a.stop()
        cleanup_host()
        cleanup_bpf(a.bpf_root)
        shutil.rmtree(workdir, ignore_errors=True)
    assert iptables_leaks() == [], "agent cleanup left iptables rules behind"


def test_both_sockets_refuse_an_unprivileged_user(agent):
    """nobody can reach each socket's path but connect() is refused with
    EACCES; root connects and gets answers on both."""
    for path in (agent.api_socket, agent.plugin_socket):
        assert probe_as(NOBODY, path) == (0, errno.EACCES), path
        assert probe_as(0, path) == (0, 0), path
    status, reply = post(agent.plugin_socket, "POST", "/Plugin.Activate", b"{}")
    assert status == 200 and reply == {"Implements": ["NetworkDriver", "IpamDriver"]}
    assert agent.cli_json("status")["cilium"]["state"] == "Ok"


def test_socket_modes_and_owner(agent):
    """The plugin socket is root's alone (0600), the API socket root and its
    group's (0660, as Cilium's), group root; nothing for others."""
    for path, mode in ((agent.plugin_socket, 0o600), (agent.api_socket, 0o660)):
        st = os.stat(path)
        assert stat.S_ISSOCK(st.st_mode), path
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (mode, 0, 0), path


def agent_files(agent) -> list[str]:
    """Every directory and file under the agent's lib, state and bpffs roots."""
    out = []
    for root in (agent.lib_dir, agent.state_dir, agent.bpf_root):
        out.append(str(root))
        for dirpath, dirnames, filenames in os.walk(root):
            out += [os.path.join(dirpath, n) for n in dirnames + filenames]
    return out


POLICY = [{"endpointSelector": {"matchLabels": {"app": "sec"}},
           "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "client"}}]}]}]


def test_state_files_are_private(agent, tmp_path):
    """After a start and a policy import, nothing the agent keeps (the
    SQLite stores and their -wal/-shm, lock files, compiled objects, pinned
    maps and programs and their directories) is open to group or others,
    and nobody can read the stores."""
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps(POLICY))
    agent.cli("policy", "import", str(policy))
    files = agent_files(agent)
    names = {os.path.basename(f) for f in files}
    assert {"node-state.db", "cilium-agent.lock"} <= names, sorted(names)
    assert any(f.endswith(".o") for f in files), "no compiled object under the state directory"
    assert any("tc/globals" in f for f in files), "no pinned map under the bpffs root"
    loose = [f"{oct(stat.S_IMODE(os.lstat(f).st_mode))} {f}" for f in files
             if os.lstat(f).st_mode & 0o077 or os.lstat(f).st_uid != 0]
    assert loose == [], "open to group or others:\n" + "\n".join(loose)
    db = os.path.join(agent.lib_dir, "node-state.db")
    assert probe_as(NOBODY, db)[0] == errno.EACCES
