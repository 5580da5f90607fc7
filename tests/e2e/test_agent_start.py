"""Start order of a real agent: what must fail before anything is touched."""

from __future__ import annotations

import os
import socket
import subprocess

from tests.e2e.conftest import cleanup_bpf, cleanup_host, iptables_leaks
from tests.helpers import Agent


def test_taken_metrics_port_stops_the_start_before_the_datapath(dockerd, tmp_path):
    """--prometheus-serve-addr on a port another process listens on: the agent
    exits 1 naming the flag, before it loads BPF or opens its plugin socket
    (dockerd never sees an agent that is about to go away)."""
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    plugin = str(tmp_path / "plugin.sock")
    a = Agent(tmp_path / "agent", plugin_socket=plugin, extra=["--prometheus-serve-addr", f"127.0.0.1:{port}"])
    try:
        a.workdir.mkdir(parents=True)
        res = subprocess.run(a.argv, capture_output=True, text=True, timeout=120)
        log = res.stdout + res.stderr
        assert res.returncode == 1, log
        assert f"--prometheus-serve-addr 127.0.0.1:{port}" in log and "in use" in log, log
        assert not os.path.exists(a.bpf_root), "the datapath was loaded before the metrics port was bound"
        assert not os.path.exists(plugin)
        assert '"agent.stopped"' in log  # the failed start was unwound (lock released)
    finally:
        taken.close()
        cleanup_host()
        cleanup_bpf(a.bpf_root)
    assert iptables_leaks() == []
