"""--tunnel: Cilium's flag, defaulted by the store; the tunnel MTU."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from docker_cilium import defaults
from docker_cilium.agent import main as agent_main
from docker_cilium.agent.config import DaemonConfig
from docker_cilium.datapath.tunnel import tunnel_mtu


@pytest.fixture
def started(monkeypatch):
    seen = []

    async def fake_run(config):
        seen.append(config)
    monkeypatch.setattr(agent_main, "_run", fake_run)
    monkeypatch.setattr(agent_main.dclog, "setup", lambda *a: None)

    def start(args: list[str]):
        res = CliRunner().invoke(agent_main.main, args, env={})
        return res, (seen.pop() if seen else None)
    return start


def test_tunnel_defaults_by_store(started):
    assert started([])[1].tunnel == "disabled"
    etcd = ["--kvstore", "etcd", "--kvstore-opt", "etcd.address=127.0.0.1:2379"]
    assert started(etcd)[1].tunnel == "vxlan"
    assert started(etcd + ["--tunnel", "disabled"])[1].tunnel == "disabled"
    assert started(["--tunnel", "vxlan"])[1].tunnel == "vxlan"


def test_tunnel_bad_mode_refused(started):
    res, cfg = started(["--tunnel", "geneve"])
    assert res.exit_code == 2 and cfg is None and "'geneve' is not one of 'vxlan', 'disabled'" in res.output
    with pytest.raises(ValueError, match="invalid tunnel mode 'gre'"):
        DaemonConfig(tunnel="gre")


def test_daemon_config_resolves_tunnel():
    assert DaemonConfig().tunnel == "disabled"
    assert DaemonConfig(kvstore="etcd").tunnel == "vxlan"


def test_tunnel_mtu_subtracts_the_vxlan_overhead():
    assert defaults.VXLAN_OVERHEAD == 50 and defaults.VXLAN_PORT == 8472
    assert tunnel_mtu(1500, "vxlan") == 1450 and tunnel_mtu(1400, "disabled") == 1400
