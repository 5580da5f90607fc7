"""``MonitorAggregation`` (``--monitor-aggregation``) as a runtime option.

The level lives in ``cilium_config``, which the programs read on every
packet, so a change takes effect on the next packet without recompiling or
reattaching. The map is the one source of the live value (``current`` reads
it back), and it is pinned: as for ``Debug``'s flag in the same map, the
options registry writes the start flag's value, or a persisted change, at
every start (``reapply``, agent/options.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from docker_cilium.agent.options import RuntimeOption
from docker_cilium.datapath.maps.configmap import (AGGREGATION_NAMES, canonical_monitor_aggregation,
                                                   parse_monitor_aggregation)

if TYPE_CHECKING:
    from docker_cilium.agent.config import DaemonConfig


class MonitorConfigMap(Protocol):
    """What these options use of ``datapath.maps.configmap.ConfigMap``."""

    @property
    def monitor_aggregation(self) -> int: ...

    def set_monitor_aggregation(self, level: int) -> None: ...


def monitor_options(config_map: MonitorConfigMap, cfg: DaemonConfig) -> list[RuntimeOption]:
    """``MonitorAggregation``: Cilium's levels (none, lowest, low, medium,
    maximum, or 0-4), shown by their canonical name."""

    async def apply(value: str) -> None:
        config_map.set_monitor_aggregation(parse_monitor_aggregation(value))

    def current() -> str:
        level = config_map.monitor_aggregation
        return AGGREGATION_NAMES.get(level, str(level))

    return [RuntimeOption("MonitorAggregation",
                          "Level of monitor aggregation for traces from the datapath "
                          "(none, lowest, low, medium, maximum)",
                          parse=canonical_monitor_aggregation, flag=lambda: cfg.monitor_aggregation,
                          current=current, apply=apply, reapply=True)]
