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


def test_monitor_names_the_overlay_steps():
    """Traces at the tunnel's observation points read as Cilium's: "-> overlay"
    leaving through cilium_vxlan, "<- overlay" arriving from it; the drop of a
    packet without tunnel metadata has Cilium's text."""
    from docker_cilium.datapath import drop
    from docker_cilium.datapath.maps import eventsmap as em
    from docker_cilium.monitor.events import decode
    from docker_cilium.monitor.format import render

    def trace(point: int) -> em.DatapathEvent:
        return em.DatapathEvent(cpu=0, type=em.NOTIFY_TRACE, subtype=point, source=3, hash=1, len_orig=98,
                                len_cap=0, src_label=257, dst_label=256, dst_id=0, ifindex=1, data=b"")
    out = decode(trace(em.TRACE_TO_OVERLAY), "t")
    assert out["traceSummary"] == "-> overlay" and out["observationPoint"] == "to-overlay"
    out = decode(trace(em.TRACE_FROM_OVERLAY), "t")
    assert out["traceSummary"] == "<- overlay" and out["observationPoint"] == "from-overlay"
    assert render(out, 0, False)[0].startswith("<- overlay flow 0x1 identity 257->256")
    assert drop.DROP_REASONS[drop.DROP_NO_TUNNEL_KEY] == "No tunnel/encapsulation key (datapath BUG!)"
