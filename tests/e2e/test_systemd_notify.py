"""The agent's readiness report to systemd, from a real agent process.

contrib/systemd/cilium.service is Type=notify and ordered Before=docker.service:
dockerd may start as soon as READY=1 arrives, so at that moment the plugin
socket must already answer dockerd's handshake.
"""

from __future__ import annotations

import socket
import threading

import pytest

from tests.e2e.conftest import running_agent


@pytest.fixture
def unstarted_agent(dockerd, tmp_path_factory):
    yield from running_agent(tmp_path_factory.mktemp("agent"), start=False)


def activate(path: str) -> str:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(path)
        s.sendall(b"POST /Plugin.Activate HTTP/1.0\r\nContent-Length: 2\r\n\r\n{}")
        return s.recv(4096).decode()


def test_ready_is_sent_once_the_plugin_socket_serves(unstarted_agent, tmp_path):
    agent = unstarted_agent
    notify_path = str(tmp_path / "notify.sock")
    seen: dict[str, object] = {}
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(notify_path)
        notify.settimeout(60)

        def receive() -> None:
            try:
                seen["message"] = notify.recv(256)
                # What dockerd would do right now: the plugin handshake.
                seen["activate"] = activate(agent.plugin_socket)
            except Exception as exc:  # reported by the assertions below
                seen["error"] = exc

        listener = threading.Thread(target=receive)
        listener.start()
        agent.env["NOTIFY_SOCKET"] = notify_path
        agent.start()
        listener.join(60)
    assert "error" not in seen, seen
    assert seen["message"] == b"READY=1"
    reply = str(seen["activate"])
    assert " 200 " in reply.splitlines()[0] and "NetworkDriver" in reply and "IpamDriver" in reply, reply
