"""The endpoint record and its explicit state machine.

States and names are Cilium's, so `cilium endpoint list` reads the same. The
transition table is the single place that says what may follow what; an
illegal transition is a bug, raised loudly instead of silently overwritten.
"""

from __future__ import annotations

import enum
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import structlog

from docker_cilium.identity import reserved

log = structlog.get_logger(__name__)


class State(str, enum.Enum):
    CREATING = "creating"
    WAITING_FOR_IDENTITY = "waiting-for-identity"
    NOT_READY = "not-ready"
    WAITING_TO_REGENERATE = "waiting-to-regenerate"
    REGENERATING = "regenerating"
    RESTORING = "restoring"
    READY = "ready"
    DISCONNECTING = "disconnecting"
    DISCONNECTED = "disconnected"


_ANY_LIVE = {State.DISCONNECTING}
TRANSITIONS: dict[State, set[State]] = {
    State.CREATING: {State.WAITING_FOR_IDENTITY, State.WAITING_TO_REGENERATE, State.READY} | _ANY_LIVE,
    State.WAITING_FOR_IDENTITY: {State.WAITING_TO_REGENERATE, State.READY, State.NOT_READY} | _ANY_LIVE,
    State.NOT_READY: {State.WAITING_FOR_IDENTITY, State.WAITING_TO_REGENERATE} | _ANY_LIVE,
    State.WAITING_TO_REGENERATE: {State.REGENERATING, State.WAITING_FOR_IDENTITY} | _ANY_LIVE,
    State.REGENERATING: {State.READY, State.NOT_READY, State.WAITING_TO_REGENERATE,
                         State.WAITING_FOR_IDENTITY} | _ANY_LIVE,
    State.RESTORING: {State.WAITING_TO_REGENERATE, State.READY, State.NOT_READY,
                      State.WAITING_FOR_IDENTITY} | _ANY_LIVE,
    State.READY: {State.WAITING_TO_REGENERATE, State.WAITING_FOR_IDENTITY, State.NOT_READY} | _ANY_LIVE,
    State.DISCONNECTING: {State.DISCONNECTED},
    State.DISCONNECTED: set(),
}


class InvalidTransition(RuntimeError):
    pass


@dataclass
class Endpoint:
    """One container attachment to a cilium network (a Docker endpoint)."""

    id: int
    docker_endpoint_id: str
    docker_network_id: str
    ifname: str
    ifindex: int
    peer_ifname: str
    mac: str
    host_mac: str
    ipv4: str | None = None
    ipv6: str | None = None
    mtu: int = 1500
    container_id: str = ""
    container_name: str = ""
    sandbox_key: str = ""
    labels: list[str] = field(default_factory=list)  # from the container (Docker)
    user_labels: list[str] = field(default_factory=list)  # added with `cilium endpoint labels --add`
    disabled_labels: list[str] = field(default_factory=list)  # container labels removed with --delete
    identity: int = reserved.INIT  # reserved:init until the container's labels are known
    state: State = State.CREATING
    policy_enforcement: str = "default"  # per-endpoint override: default|always|never
    policy_revision: int = 0
    ingress_enforced: bool = False
    egress_enforced: bool = False
    created: float = field(default_factory=time.time)
    status_log: list[dict[str, Any]] = field(default_factory=list)

    @property
    def effective_labels(self) -> list[str]:
        """What the identity is made of: container labels, minus disabled, plus user."""
        return sorted((set(self.labels) - set(self.disabled_labels)) | set(self.user_labels))

    @property
    def labels_known(self) -> bool:
        """Whether the identity can be derived from labels yet.

        Docker tells the container's labels only after CreateEndpoint, through
        its event stream (which also sets ``container_id``); until then, or
        until a user label is added, the endpoint holds ``reserved:init``. A
        container that has no labels at all is known too: its identity is the
        one of the empty label set, as Cilium's.
        """
        return bool(self.container_id) or bool(self.effective_labels)

    def set_state(self, new: State, reason: str) -> None:
        if new == self.state:
            return
        if new not in TRANSITIONS[self.state]:
            raise InvalidTransition(f"endpoint {self.id}: {self.state.value} -> {new.value} is not allowed")
        log.debug("endpoint.state", endpoint=self.id, old=self.state.value, new=new.value, reason=reason)
        self.state = new
        self.status_log.append({"timestamp": time.time(), "state": new.value, "message": reason})
        del self.status_log[:-20]

    def to_record(self) -> dict[str, Any]:
        d = asdict(self)
        d["state"] = self.state.value
        return d

    @classmethod
    def from_record(cls, d: dict[str, Any]) -> "Endpoint":
        """A persisted endpoint, starting life in this process as RESTORING
        (as Cilium's ParseEndpoint): the recorded state was the old process's."""
        d = dict(d)
        d["state"] = State.RESTORING
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})

    def to_model(self) -> dict[str, Any]:
        """Cilium's REST endpoint model (the fields `cilium endpoint get` shows)."""
        return {
            "id": self.id,
            "container-id": self.container_id,
            "container-name": self.container_name,
            "docker-endpoint-id": self.docker_endpoint_id,
            "docker-network-id": self.docker_network_id,
            "interface-name": self.ifname,
            "interface-index": self.ifindex,
            "mac": self.mac,
            "host-mac": self.host_mac,
            "addressing": {"ipv4": self.ipv4 or "", "ipv6": self.ipv6 or ""},
            "labels": {
                "orchestration-identity": list(self.labels),
                "user": list(self.user_labels),
                "disabled": list(self.disabled_labels),
                "effective": self.effective_labels,
            },
            "identity": {"id": self.identity},
            "state": self.state.value,
            "policy-enforcement": self.policy_enforcement,
            "policy": {
                "ingress-enforced": self.ingress_enforced,
                "egress-enforced": self.egress_enforced,
                "revision": self.policy_revision,
            },
            "mtu": self.mtu,
            "status": list(self.status_log),
        }

