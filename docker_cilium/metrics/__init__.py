"""Prometheus metrics under Cilium's names (``pkg/metrics``).

One :class:`AgentMetrics` per agent holds its own ``CollectorRegistry`` (never
the process-wide default), so several agents or test apps in one process
never collide. Counters the agent bumps as things happen (API calls, KV
store operations, regenerations, failed policy imports) live in it; what is
a count of current state (endpoints by state, identities, policies) and the
datapath's per-CPU drop/forward counters are read when a scrape asks.
"""

from docker_cilium.metrics.registry import AgentMetrics
from docker_cilium.metrics.state import AgentState, agent_state

__all__ = ["AgentMetrics", "AgentState", "agent_state"]
