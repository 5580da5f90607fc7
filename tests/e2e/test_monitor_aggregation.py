"""--monitor-aggregation and `cilium config MonitorAggregation=...` / `Debug=...`
on a real agent: what the pinned cilium_config holds (the programs read it on
every packet: tests/privileged/test_monitor_events.py), through restarts."""

from __future__ import annotations

from docker_cilium import defaults
from docker_cilium.datapath.maps import configmap as cfg
from docker_cilium.datapath.maps.registry import DatapathMaps
from tests.helpers import Agent


def pinned(agent: Agent) -> tuple[int, bool]:
    """(aggregation level, CFG_F_DEBUG) in the agent's pinned cilium_config."""
    maps = DatapathMaps.open(defaults.bpf_pin_root(agent.bpf_root))
    try:
        v = maps.config.get()
        return v.monitor_aggregation, bool(v.flags & cfg.CFG_F_DEBUG)
    finally:
        maps.close()


def test_flag_runtime_option_and_restarts(agent):
    a = agent                                   # this module's agent, defaults: medium, --debug
    assert pinned(a) == (cfg.MONITOR_AGGREGATION_MEDIUM, True)
    a.stop()
    a.extra = ["--monitor-aggregation", "low"]
    a.start()
    assert pinned(a) == (cfg.MONITOR_AGGREGATION_LOW, True)
    assert a.cli_json("config")["options"]["MonitorAggregation"] == "low"

    res = a.cli("config", "MonitorAggregation=NONE", "Debug=false")
    assert ["MonitorAggregation", "none"] in [line.split() for line in res.stdout.splitlines()]
    assert pinned(a) == (cfg.MONITOR_AGGREGATION_NONE, False)
    bad = a.cli("config", "MonitorAggregation=loud", check=False)
    assert bad.returncode == 1 and "(400)" in bad.stderr
    assert "invalid value 'loud' for option MonitorAggregation" in bad.stderr
    assert pinned(a) == (cfg.MONITOR_AGGREGATION_NONE, False)

    a.stop()                                    # same flags: the changes come back
    a.start()
    assert pinned(a) == (cfg.MONITOR_AGGREGATION_NONE, False)
    assert a.cli_json("config")["options"]["MonitorAggregation"] == "none"

    a.stop()                                    # another flag: it wins, the Debug change stays
    a.extra = ["--monitor-aggregation", "max"]
    a.start()
    assert pinned(a) == (cfg.MONITOR_AGGREGATION_MAX, False)
    assert a.cli_json("config")["options"]["MonitorAggregation"] == "maximum"
