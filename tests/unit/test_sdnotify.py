"""The agent's readiness message to systemd (contrib/systemd/cilium.service is Type=notify)."""

from __future__ import annotations

import socket

from docker_cilium.agent.sdnotify import ENV, notify


def test_notify_sends_state_to_notify_socket(tmp_path, monkeypatch):
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.settimeout(2)
        monkeypatch.setenv(ENV, path)
        assert notify("READY=1") is True
        assert sock.recv(64) == b"READY=1"


def test_notify_abstract_socket(monkeypatch):
    name = f"dc-sdnotify-test-{id(monkeypatch)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2)
        monkeypatch.setenv(ENV, "@" + name)
        assert notify("READY=1") is True
        assert sock.recv(64) == b"READY=1"


def test_notify_outside_systemd_is_a_no_op(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    assert notify("READY=1") is False


def test_notify_to_a_missing_socket_does_not_raise(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV, str(tmp_path / "gone.sock"))
    assert notify("READY=1") is False
