"""`cilium monitor` when the agent goes away mid-stream (killed: the stream
breaks inside a chunk; stopped: the stream ends): one line saying so and
exit status 1, never a traceback. The agent is a unix socket server that
speaks just enough HTTP; the CLI runs as a real process."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

START = b'{"type":"monitor-start","cpus":2,"npages":64,"pagesize":4096}\n'
DROP = (b'{"type":"drop","time":"2026-01-01T00:00:00Z","cpu":0,"mark":"0x1","source":1,"bytes":98,'
        b'"srcLabel":2,"dstLabel":3,"dstID":1,"ifindex":7,"verdict":"DROPPED","reason":"Policy denied (L3)",'
        b'"reasonCode":133,"summaryText":"10.0.0.1 -> 10.0.0.2 EchoRequest","data":""}\n')


def chunk(data: bytes) -> bytes:
    return b"%x\r\n" % len(data) + data + b"\r\n"


def serve_once(path: str, body: bytes, reset: bool) -> threading.Thread:
    """Answer one GET /v1/monitor with ``body`` after the headers, then close
    the connection: with a TCP-style reset (SO_LINGER 0) if ``reset``."""
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(1)

    def run() -> None:
        conn, _ = srv.accept()
        with srv, conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\n" + body)
            if reset:
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


@pytest.mark.parametrize("body, reset", [
    (chunk(START) + chunk(DROP) + b"40\r\n{\"type\":", True),   # killed inside a chunk
    (chunk(START) + chunk(DROP) + b"0\r\n\r\n", False),          # the agent ended the stream
], ids=["killed", "stopped"])
def test_monitor_says_the_stream_ended_without_a_traceback(tmp_path: Path, body: bytes, reset: bool):
    path = str(tmp_path / "agent.sock")
    server = serve_once(path, body, reset)
    res = subprocess.run([sys.executable, "-m", "docker_cilium.cli.main", "-H", path, "monitor"],
                         capture_output=True, text=True, timeout=30)
    server.join(timeout=5)
    assert "xx drop (Policy denied (L3))" in res.stdout          # what came before is printed
    assert res.returncode == 1, res
    assert "Traceback" not in res.stderr, res.stderr
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and "the cilium agent ended the stream GET /v1/monitor" in err[0] and path in err[0], res.stderr
