"""The shipped ways to run the agent in a container, driven as a user would:
the agent image (built once, ``scripts/agent-image.sh``), ``compose/`` with
docker-compose, and the managed plugin (``make plugin``'s directory).

Every environment takes private names and directories (driver name, API and
state dirs, bpffs directory, etcd ports) so it never meets the host-run agents
of other tests on the default socket, pin root or lib dir; its ``down`` removes
what it started and the links, chains and pins its agent left.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from tests.e2e.conftest import cleanup_bpf, cleanup_host
from tests.e2e.test_policy_demo import reaches  # noqa: F401 (the e2e HTTP check, for test_compose, test_managed_plugin)
from tests.helpers import ROOT, VENV_BIN, docker, run, wait_until

AGENT_IMAGE = "local/cilium-agent:latest"  # conftest's agent_image fixture builds it
COMPOSE = shutil.which("docker-compose", path="/usr/bin") or "docker-compose"
COMPOSE_DIR = ROOT / "compose"


def build_agent_image() -> str:
    """Build (or reuse: the script compares the sources' hash) the agent image
    (once per session: the agent_image fixture; bench.compose_up)."""
    run(str(ROOT / "scripts" / "agent-image.sh"), AGENT_IMAGE, timeout=900)
    return AGENT_IMAGE


class AgentDirs:
    """Private host directories for one containerised agent (short paths: the
    API socket must fit a unix socket name)."""

    def __init__(self, name: str) -> None:
        self.root = Path(tempfile.mkdtemp(prefix=f"dct-{name}-", dir="/tmp"))
        self.run_dir = self.root / "run"
        self.lib_dir = self.root / "lib"
        self.bpf_root = f"/sys/fs/bpf/dctest-{self.root.name}"
        for d in (self.run_dir, self.lib_dir):
            d.mkdir()

    @property
    def api_socket(self) -> str:
        return str(self.run_dir / "cilium.sock")

    def cli(self, *args: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess:
        """The host's `cilium` CLI against this agent's API socket."""
        return run(str(VENV_BIN / "cilium"), "-H", self.api_socket, *args, check=check, input=input)

    def remove(self) -> None:
        cleanup_host()
        cleanup_bpf(self.bpf_root)
        shutil.rmtree(self.root, ignore_errors=True)


class ComposeEnv:
    """``compose/docker-compose.yml`` (etcd + agent) and ``compose/demo``
    (cilium-net + app1..3) as two docker-compose projects."""

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.driver = f"dct-{tag}"
        self.network = f"dct-{tag}-net"
        self.dirs = AgentDirs(tag)
        self.env = {**os.environ, "CILIUM_DRIVER": self.driver, "CILIUM_NETWORK": self.network,
                    "CILIUM_RUN_DIR": str(self.dirs.run_dir), "CILIUM_LIB_DIR": str(self.dirs.lib_dir),
                    "CILIUM_BPF_ROOT": self.dirs.bpf_root, "ETCD_PORT": "23790", "ETCD_PEER_PORT": "23800",
                    "CILIUM_IMAGE": AGENT_IMAGE}
        self.projects = {"agent": (f"dct{tag}", COMPOSE_DIR), "demo": (f"dct{tag}demo", COMPOSE_DIR / "demo")}

    @property
    def plugin_socket(self) -> str:
        return f"/run/docker/plugins/{self.driver}.sock"

    def compose(self, which: str, *args: str, check: bool = True, timeout: float = 300,
                input: str | None = None) -> subprocess.CompletedProcess:
        project, cwd = self.projects[which]
        proc = subprocess.run([COMPOSE, "--no-ansi", "-p", project, *args], cwd=cwd, env=self.env,
                              capture_output=True, text=True, timeout=timeout, input=input)
        if check and proc.returncode != 0:
            raise AssertionError(f"docker-compose {' '.join(args)} ({which}) failed ({proc.returncode}):\n"
                                 f"{proc.stdout}\n{proc.stderr}\nagent log:\n{self.agent_log()}")
        return proc

    def agent_log(self) -> str:
        return self.compose("agent", "logs", "--no-color", "--tail", "40", "cilium", check=False).stdout[-6000:]

    def up(self) -> float:
        """Agent and etcd, then the demo; seconds from the first `up` until the
        last demo container runs."""
        t0 = time.monotonic()
        self.compose("agent", "up", "-d")
        wait_until(lambda: os.path.exists(self.plugin_socket), timeout=60,
                   what=f"the compose agent's plugin socket (log: {self.agent_log()})")
        self.compose("demo", "up", "-d")
        return time.monotonic() - t0

    def container(self, service: str) -> str:
        return self.compose("demo", "ps", "-q", service).stdout.strip()

    def address(self, service: str, key: str = "IPAddress") -> str:
        fmt = "{{(index .NetworkSettings.Networks \"%s\").%s}}" % (self.network, key)
        return docker("inspect", "-f", fmt, self.container(service)).stdout.strip()

    def down(self) -> None:
        """Both projects down (volumes too), whatever state they are in; then the host."""
        try:
            self.compose("demo", "down", "-v", "--timeout", "2", check=False)
            self.compose("agent", "down", "-v", "--timeout", "5", check=False)
            for project, _ in self.projects.values():
                left = docker("ps", "-aq", "--filter", f"label=com.docker.compose.project={project}",
                              check=False).stdout.split()
                if left:
                    docker("rm", "-f", *left, check=False)
            docker("network", "rm", self.network, check=False)
        finally:
            self.dirs.remove()


class PluginEnv:
    """``scripts/plugin.sh`` (`make plugin`): the agent as a managed plugin
    named ``name``, with its mounts and bpffs directory set to private ones."""

    def __init__(self, tag: str) -> None:
        self.name = f"dct-{tag}:test"
        self.dirs = AgentDirs(tag)

    def create(self) -> None:
        run(str(ROOT / "scripts" / "plugin.sh"), self.name, timeout=900)

    def enable(self) -> None:
        docker("plugin", "set", self.name, f"cilium-run.source={self.dirs.run_dir}",
               f"cilium-lib.source={self.dirs.lib_dir}", f"CILIUM_BPF_ROOT={self.dirs.bpf_root}", "CILIUM_DEBUG=true")
        docker("plugin", "enable", "--timeout", "60", self.name)

    def inspect(self, fmt: str) -> str:
        return docker("plugin", "inspect", "-f", fmt, self.name).stdout.strip()

    def remove(self) -> None:
        try:
            docker("plugin", "disable", "-f", self.name, check=False)
            docker("plugin", "rm", "-f", self.name, check=False)
        finally:
            self.dirs.remove()
