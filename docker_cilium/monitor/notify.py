"""What the endpoint, policy and identity code need to report agent events
(Cilium's AgentNotify) to `cilium monitor`. No imports: any module can take
one without depending on the monitor package."""

from __future__ import annotations

from typing import Any, Protocol

# Cilium's AgentNotification texts (pkg/monitor/api notifyTable) and ours.
AGENT_START = "Cilium agent started"
AGENT_ENDPOINT_CREATED = "Endpoint created"
AGENT_ENDPOINT_REGENERATED = "Endpoint regenerated"
AGENT_ENDPOINT_REGENERATE_FAIL = "Failed endpoint regeneration"
AGENT_ENDPOINT_DELETED = "Endpoint deleted"
AGENT_POLICY_UPDATED = "Policy updated"
AGENT_POLICY_DELETED = "Policy deleted"
AGENT_IDENTITY_ALLOCATED = "Identity allocated"
AGENT_IDENTITY_RELEASED = "Identity released"


class AgentNotifier(Protocol):
    def agent_event(self, subtype: str, message: dict[str, Any]) -> None:
        """Publish one agent event; must never block or raise."""
        ...


class NoNotifier:
    """For objects built without a monitor (unit tests, tools)."""

    def agent_event(self, subtype: str, message: dict[str, Any]) -> None:
        return None
