"""MonitorAggregation as a runtime option (agent/monitor_options.py) on the
options registry, against a config map fake (the real map:
tests/e2e/test_monitor_aggregation.py; Debug's datapath flag:
tests/unit/test_runtime_options.py)."""

from __future__ import annotations

import pytest

from docker_cilium.agent.config import DaemonConfig
from docker_cilium.agent.monitor_options import monitor_options
from docker_cilium.agent.options import RuntimeOptions
from docker_cilium.datapath.maps import configmap as cfg
from docker_cilium.errors import BadRequest


class FakeConfigMap:
    """cilium_config[0] as two integers; records every write."""

    def __init__(self, level: int = 0) -> None:
        self.monitor_aggregation = level
        self.writes: list[int] = []

    def set_monitor_aggregation(self, level: int) -> None:
        self.monitor_aggregation = level
        self.writes.append(level)


async def _registry(store, cmap: FakeConfigMap, conf: DaemonConfig) -> RuntimeOptions:
    opts = RuntimeOptions(store)
    for option in monitor_options(cmap, conf):
        opts.register(option)
    await opts.restore()
    return opts


async def test_start_flag_is_written_over_a_pinned_value(store):
    cmap = FakeConfigMap(level=cfg.MONITOR_AGGREGATION_NONE)  # left by an earlier run
    opts = await _registry(store, cmap, DaemonConfig(monitor_aggregation="maximum"))
    assert cmap.monitor_aggregation == cfg.MONITOR_AGGREGATION_MAX
    assert opts.values() == {"MonitorAggregation": "maximum"}


async def test_set_writes_the_map_and_persists_until_the_flag_changes(store):
    cmap = FakeConfigMap()
    opts = await _registry(store, cmap, DaemonConfig())
    assert cmap.monitor_aggregation == cfg.MONITOR_AGGREGATION_MEDIUM     # the default flag
    assert await opts.set({"MonitorAggregation": "NONE"}) == {"MonitorAggregation": "none"}
    assert cmap.monitor_aggregation == cfg.MONITOR_AGGREGATION_NONE
    assert opts.values() == {"MonitorAggregation": "none"}
    # restart, same flag: the change comes back
    cmap2 = FakeConfigMap()
    await _registry(store, cmap2, DaemonConfig())
    assert cmap2.monitor_aggregation == cfg.MONITOR_AGGREGATION_NONE
    # restart with another flag: the flag wins
    cmap3 = FakeConfigMap()
    await _registry(store, cmap3, DaemonConfig(monitor_aggregation="low"))
    assert cmap3.monitor_aggregation == cfg.MONITOR_AGGREGATION_LOW


@pytest.mark.parametrize("value, message", [
    ("loud", "invalid value 'loud' for option MonitorAggregation: invalid monitor aggregation level 'loud'"),
    ("7", "invalid value '7' for option MonitorAggregation: monitor aggregation level must be between 0 and 4")])
async def test_bad_level_is_a_400_and_the_map_is_untouched(store, value, message):
    cmap = FakeConfigMap()
    opts = await _registry(store, cmap, DaemonConfig())
    writes = list(cmap.writes)
    with pytest.raises(BadRequest, match=message):
        await opts.set({"MonitorAggregation": value})
    assert cmap.writes == writes
