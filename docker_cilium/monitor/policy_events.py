"""Agent events for policy changes (Cilium's "Policy updated" / "Policy
deleted" with the rules' labels and the new revision), observed on the policy
manager itself: every import or delete, from any caller, passes here."""

from __future__ import annotations

from docker_cilium.monitor.notify import AGENT_POLICY_DELETED, AGENT_POLICY_UPDATED, AgentNotifier
from docker_cilium.policy.manager import Commit, PolicyManager, PolicyState


class PolicyEvents:
    """A PolicyObserver. Subscribe it after the Regenerator: it sits next to
    the commit, so an event is sent only for a change that took effect."""

    def __init__(self, policy: PolicyManager, notify: AgentNotifier) -> None:
        self.policy = policy
        self.notify = notify
        policy.subscribe(self)

    async def apply_policy(self, change: PolicyState, commit: Commit) -> None:
        before = self.policy.repo.rules
        await commit()
        after = change.repo.rules
        old, new = {id(r) for r in before}, {id(r) for r in after}
        added = [r for r in after if id(r) not in old]
        removed = [r for r in before if id(r) not in new]
        for subtype, rules in ((AGENT_POLICY_UPDATED, added), (AGENT_POLICY_DELETED, removed)):
            if rules:
                labels = sorted({lbl for r in rules for lbl in r.label_strings})
                self.notify.agent_event(subtype, {"labels": labels, "revision": change.repo.revision,
                                                  "rule_count": len(rules)})
