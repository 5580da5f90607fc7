"""Gauges of the agent's current state, taken as one snapshot per scrape.

The snapshot is built on the event loop (the endpoint, policy and identity
objects belong to it) and is a plain immutable value afterwards, so the
exposition can be rendered in a worker thread without touching live state.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from docker_cilium.endpoint.model import State
from docker_cilium.identity import reserved

if TYPE_CHECKING:
    from prometheus_client import Metric

    from docker_cilium.api.keys import APIDaemon

# Cilium's identity types (the ``type`` label of cilium_identity).
IDENTITY_RESERVED, IDENTITY_CLUSTER, IDENTITY_NODE = "reserved", "cluster_local", "node_local"


@dataclass(frozen=True)
class AgentState:
    """What the state gauges report, at one moment."""

    endpoint_states: dict[str, int] = field(default_factory=dict)
    identities: dict[str, int] = field(default_factory=dict)
    policies: int = 0
    policy_max_revision: int = 0
    enforcement: dict[str, int] = field(default_factory=dict)

    @property
    def endpoints(self) -> int:
        return sum(self.endpoint_states.values())


def _enforcement(ingress: bool, egress: bool) -> str:
    """Cilium's ``enforcement`` label: which directions an endpoint enforces."""
    return {(True, True): "both", (True, False): "ingress", (False, True): "egress"}.get((ingress, egress), "none")


def agent_state(daemon: APIDaemon) -> AgentState:
    """Count the agent's endpoints, identities and rules (on the event loop:
    these are the loop's objects; a few dict walks, no I/O)."""
    states = {s.value: 0 for s in State}
    enforcement = {k: 0 for k in ("none", "ingress", "egress", "both")}
    for ep in list(daemon.endpoints.endpoints.values()):
        states[State(ep.state).value] += 1
        enforcement[_enforcement(ep.ingress_enforced, ep.egress_enforced)] += 1
    reserved_ids = reserved.all_reserved()
    cluster = {i.id for i in daemon.identities.allocator.cached()} - set(reserved_ids)
    local = set(daemon.identities.local.cidr_identities().values()) - cluster - set(reserved_ids)
    return AgentState(
        endpoint_states=states,
        identities={IDENTITY_RESERVED: len(reserved_ids), IDENTITY_CLUSTER: len(cluster), IDENTITY_NODE: len(local)},
        policies=len(daemon.policy.repo.rules),
        policy_max_revision=daemon.policy.revision,
        enforcement=enforcement,
    )


class AgentStateCollector(Collector):
    """Yields the gauges of the last snapshot handed to :meth:`update`."""

    def __init__(self) -> None:
        self._state: AgentState | None = None

    def update(self, state: AgentState) -> None:
        self._state = state  # one reference swap: a concurrent collect sees old or new, whole

    def collect(self) -> Iterator[Metric]:
        st = self._state
        if st is None:
            return
        yield GaugeMetricFamily("cilium_endpoint", "Number of endpoints managed by this agent", value=st.endpoints)
        g = GaugeMetricFamily("cilium_endpoint_state", "Count of all endpoints, tagged by different endpoint states",
                              labels=["endpoint_state"])
        for name, n in sorted(st.endpoint_states.items()):
            g.add_metric([name], n)
        yield g
        g = GaugeMetricFamily("cilium_identity", "Number of identities currently allocated", labels=["type"])
        for kind, n in sorted(st.identities.items()):
            g.add_metric([kind], n)
        yield g
        yield GaugeMetricFamily("cilium_policy", "Number of policies currently loaded", value=st.policies)
        yield GaugeMetricFamily("cilium_policy_max_revision", "Highest policy revision number in the agent",
                                value=st.policy_max_revision)
        g = GaugeMetricFamily("cilium_policy_endpoint_enforcement_status",
                              "Number of endpoints labeled by policy enforcement status", labels=["enforcement"])
        for kind, n in sorted(st.enforcement.items()):
            g.add_metric([kind], n)
        yield g
