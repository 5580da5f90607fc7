"""Every agent flag reads CILIUM_<FLAG> from the environment as Cilium's does;
the managed plugin's settable env (plugin/config.json) relies on it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from docker_cilium.agent import main as agent_main

PLUGIN_CONFIG = Path(__file__).resolve().parents[2] / "plugin" / "config.json"


@pytest.fixture
def started(monkeypatch):
    """Run `cilium-agent` up to the daemon: the DaemonConfig it would start with."""
    seen = []

    async def fake_run(config):
        seen.append(config)
    monkeypatch.setattr(agent_main, "_run", fake_run)
    monkeypatch.setattr(agent_main.dclog, "setup", lambda *a: None)

    def start(args: list[str], env: dict[str, str]):
        res = CliRunner().invoke(agent_main.main, args, env=env)
        assert res.exit_code == 0, res.output
        return seen.pop()
    return start


def test_environment_sets_flags(started):
    cfg = started([], {"CILIUM_KVSTORE": "etcd", "CILIUM_KVSTORE_OPT": "etcd.address=127.0.0.1:2379 lease.ttl=20",
                       "CILIUM_DEBUG": "true", "CILIUM_BPF_ROOT": "/sys/fs/bpf/x"})
    assert cfg.kvstore == "etcd" and cfg.kvstore_opts == {"etcd.address": "127.0.0.1:2379", "lease.ttl": "20"}
    assert cfg.debug is True and cfg.bpf_root == "/sys/fs/bpf/x"


def test_command_line_beats_environment(started):
    cfg = started(["--enable-policy", "always"], {"CILIUM_ENABLE_POLICY": "never"})
    assert cfg.policy_enforcement == "always"


def test_plugin_config_env_names_agent_flags_and_its_defaults_start(started):
    config = json.loads(PLUGIN_CONFIG.read_text())
    env = {e["name"]: e["value"] for e in config["env"]}
    flags = {opt for p in agent_main.main.params for opt in p.opts}
    for name in env:
        assert name.startswith("CILIUM_") and "--" + name[7:].lower().replace("_", "-") in flags, name
    cfg = started([], env)
    assert cfg.kvstore == "local" and cfg.debug is False and cfg.policy_enforcement == "default"
