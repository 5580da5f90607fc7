"""Process and host helpers shared by the privileged and end-to-end suites."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
DOCKER = shutil.which("docker", path="/usr/bin") or shutil.which("docker") or "docker"


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("this suite needs root (CAP_NET_ADMIN, CAP_BPF): run it with `sudo make test`")


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: run `sudo make install`")
    return path


def run(*cmd: str, check: bool = True, timeout: float = 60, input: str | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=input)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def docker(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    return run(DOCKER, *args, check=check, timeout=timeout)


def wait_until(fn, timeout: float = 20, interval: float = 0.1, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = fn()
            if last:
                return last
        except Exception as exc:  # keep polling; report the last error
            last = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


class Agent:
    """A real cilium-agent process with its own state directories."""

    def __init__(self, workdir: Path, plugin_socket: str = "/run/docker/plugins/cilium.sock",
                 extra: list[str] | None = None, env: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        self.lib_dir = workdir / "lib"
        self.state_dir = workdir / "state"
        self.api_socket = str(workdir / "cilium.sock")
        if len(self.api_socket.encode()) >= 108:  # sun_path: the agent could not bind it
            raise ValueError(f"agent directory too deep for a unix socket: {self.api_socket}")
        self.plugin_socket = plugin_socket
        self.extra = extra or []
        self.env = env or {}  # added to the agent's environment (e.g. a crash point)
        self.log_path = workdir / "agent.log"
        # A private bpffs directory: pinned maps never collide with a real agent's.
        self.bpf_root = f"/sys/fs/bpf/dctest-{workdir.name}"
        self.proc: subprocess.Popen | None = None

    @property
    def argv(self) -> list[str]:
        return [str(VENV_BIN / "cilium-agent"), "--lib-dir", str(self.lib_dir), "--state-dir", str(self.state_dir),
                "--socket-path", self.api_socket, "--plugin-socket", self.plugin_socket,
                "--bpf-root", self.bpf_root,
                "--log-format", "json", "--debug", *self.extra]

    def start(self, timeout: float = 30) -> "Agent":
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                     env={**os.environ, **self.env})
        wait_until(self._ready, timeout=timeout, what=f"agent API (log: {self.log_path})")
        return self

    def _ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"agent exited with {self.proc.returncode}:\n{self.log()}")
        # Answering is enough: `cilium status` exits 1 while a component (the KV store) is in Failure.
        res = self.cli("status", "-o", "json", check=False)
        return res.stdout.startswith("{") and os.path.exists(self.plugin_socket)

    def log(self) -> str:
        try:
            return self.log_path.read_text()[-6000:]
        except FileNotFoundError:
            return ""

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        os.environ["CILIUM_BPF_ROOT"] = self.bpf_root  # `cilium bpf ...` reads our private pins
        return run(str(VENV_BIN / "cilium"), "-H", self.api_socket, *args, check=check)

    def cli_json(self, *args: str) -> Any:
        return json.loads(self.cli(*args, "-o", "json").stdout)


class LineProcess:
    """A long-running helper (e.g. a nettool mode) that prints "ready" once
    set up, then answers each stdin line with one stdout line; killed by close()."""

    def __init__(self, *argv: str) -> None:
        self.proc = subprocess.Popen(list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        ready = self.proc.stdout.readline().strip()
        if ready != "ready":
            self.close()
            raise AssertionError(f"{' '.join(argv)} did not start: {ready!r}")

    def say(self, line: str = "x") -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def finish(self, timeout: float = 10) -> int:
        """Close stdin (the helper's cue to end) and wait for its exit status."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        return self.proc.wait(timeout=timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=5)
