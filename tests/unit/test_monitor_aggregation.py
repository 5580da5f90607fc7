"""--monitor-aggregation / MonitorAggregation values, parsed as Cilium's
ParseMonitorAggregationLevel (pkg/option/monitor.go)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from docker_cilium.agent import main as agent_main
from docker_cilium.datapath.maps import configmap as cfg


@pytest.mark.parametrize("value, level", [
    ("", cfg.MONITOR_AGGREGATION_NONE), ("none", cfg.MONITOR_AGGREGATION_NONE),
    ("disabled", cfg.MONITOR_AGGREGATION_NONE), ("lowest", cfg.MONITOR_AGGREGATION_LOWEST),
    ("low", cfg.MONITOR_AGGREGATION_LOW), ("LOW", cfg.MONITOR_AGGREGATION_LOW),
    ("medium", cfg.MONITOR_AGGREGATION_MEDIUM), ("max", cfg.MONITOR_AGGREGATION_MAX),
    ("maximum", cfg.MONITOR_AGGREGATION_MAX), ("0", 0), ("4", 4), (3, 3)])
def test_parse_accepts_ciliums_spellings(value, level):
    assert cfg.parse_monitor_aggregation(value) == level


@pytest.mark.parametrize("value, message", [
    ("-1", "must be between 0 and 4"), ("5", "must be between 0 and 4"),
    ("foo", "invalid monitor aggregation level 'foo'"), (True, "invalid"), (None, "expected a string"),
    (1.5, "expected a string")])
def test_parse_rejects_with_a_precise_message(value, message):
    with pytest.raises(ValueError, match=message):
        cfg.parse_monitor_aggregation(value)


def test_canonical_names_round_trip():
    for level, name in cfg.AGGREGATION_NAMES.items():
        assert cfg.parse_monitor_aggregation(name) == level
        assert cfg.canonical_monitor_aggregation(level) == name
    assert cfg.canonical_monitor_aggregation("MAX") == "maximum"
    assert cfg.DEFAULT_MONITOR_AGGREGATION == cfg.MONITOR_AGGREGATION_MEDIUM


def test_agent_flag_rejects_a_bad_level_before_starting(monkeypatch):
    started = []
    monkeypatch.setattr(agent_main, "_run", lambda config: started.append(config))
    res = CliRunner().invoke(agent_main.main, ["--monitor-aggregation", "loud"])
    assert res.exit_code == 2 and "invalid monitor aggregation level 'loud'" in res.output
    assert not started


@pytest.mark.parametrize("args, want", [([], "medium"), (["--monitor-aggregation", "MAX"], "maximum"),
                                        (["--monitor-aggregation", "0"], "none")])
def test_agent_flag_default_and_canonical_value(monkeypatch, args, want):
    seen = []

    async def fake_run(config):
        seen.append(config.monitor_aggregation)
    monkeypatch.setattr(agent_main, "_run", fake_run)
    res = CliRunner().invoke(agent_main.main, args)
    assert res.exit_code == 0, res.output
    assert seen == [want]
