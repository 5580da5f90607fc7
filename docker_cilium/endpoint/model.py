"""The endpoint record and its explicit state machine.

States and names are Cilium's, so `cilium endpoint list` reads the same. The
transition table is the single place that says what may follow what; an
illegal transition is a bug, raised loudly instead of silently overwritten.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field, fields
from typing import Any, Iterable

import structlog

from docker_cilium.identity import reserved
from docker_cilium.timefmt import rfc3339

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


#: Entries of an endpoint's status log (`cilium endpoint log`), newest last.
#: In memory only: a record save per transition would cost a store write per
#: endpoint on every policy change. After a restart the log starts again with
#: the restore (the record itself, state aside, is what survives).
STATUS_LOG_MAX = 100
CODE_OK, CODE_FAILED = "OK", "Failed"
_MEMORY_ONLY = ("status_log",)


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

    def set_state(self, new: State, reason: str, failed: bool | None = None) -> None:
        """Checked transition, logged with its reason; ``failed`` defaults to
        whether the endpoint becomes not-ready (a failed regeneration)."""
        if new == self.state:
            return
        if new not in TRANSITIONS[self.state]:
            raise InvalidTransition(f"endpoint {self.id}: {self.state.value} -> {new.value} is not allowed")
        log.debug("endpoint.state", endpoint=self.id, old=self.state.value, new=new.value, reason=reason)
        self.state = new
        self.log_status(reason, new == State.NOT_READY if failed is None else failed)

    def log_status(self, message: str, failed: bool = False) -> None:
        """An entry in the status log at the current state (also for events
        that change no state, e.g. a regeneration an operator asked for)."""
        self.status_log.append({"timestamp": time.time(), "state": self.state.value,
                                "code": CODE_FAILED if failed else CODE_OK, "message": message})
        del self.status_log[:-STATUS_LOG_MAX]

    def status_model(self) -> list[dict[str, Any]]:
        """Cilium's EndpointStatusChange list, oldest first."""
        return [{**e, "timestamp": rfc3339(e["timestamp"])} for e in self.status_log]

    def to_record(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in _MEMORY_ONLY}
        d["state"] = self.state.value
        return d

    @classmethod
    def from_record(cls, d: dict[str, Any]) -> "Endpoint":
        """A persisted endpoint, starting life in this process as RESTORING
        (as Cilium's ParseEndpoint): the recorded state was the old process's."""
        d = dict(d)
        d["state"] = State.RESTORING
        known = {f for f in cls.__dataclass_fields__} - set(_MEMORY_ONLY)
        ep = cls(**{k: v for k, v in d.items() if k in known})
        ep.log_status("restoring after an agent restart (earlier log entries are not kept)")
        return ep

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
            "status": self.status_model(),
        }


def identity_pending(endpoints: Iterable[Endpoint]) -> dict[str, list[int]]:
    """Endpoints without their real identity, for ``cilium status``: those whose
    labels are known but whose identity is not allocated yet, and those still
    holding reserved:init (labels not known yet). Both pass no traffic but
    what a rule selecting reserved:init allows."""
    eps = sorted(endpoints, key=lambda e: e.id)
    return {
        "waiting-for-identity": [e.id for e in eps if e.state == State.WAITING_FOR_IDENTITY],
        "init": [e.id for e in eps if e.identity == reserved.INIT and e.state != State.WAITING_FOR_IDENTITY],
    }
