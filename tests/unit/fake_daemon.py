"""A stand-in daemon for API/CLI unit tests.

``FakeRegenerator`` has exactly the interface of the lead's
``docker_cilium.endpoint.regenerator.Regenerator`` that the API uses, backed
by the REAL policy repository and trace, so API tests exercise real
validation and verdicts; only endpoint regeneration is simulated.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from docker_cilium.agent.config import ENFORCEMENT_MODES, DaemonConfig
from docker_cilium.endpoint.manager import EndpointError
from docker_cilium.endpoint.model import Endpoint
from docker_cilium.identity import reserved
from docker_cilium.identity.allocator import Identity
from docker_cilium.identity.labels import Label, Labels
from docker_cilium.policy.repository import PolicyRepositoryError, Repository
from docker_cilium.policy.resolve import trace as trace_policy


class FakeRegenerator:
    def __init__(self, endpoints: "FakeEndpoints", enforcement: str = "default") -> None:
        self.repo = Repository()
        self.endpoints = endpoints
        self._enforcement = enforcement
        self._ids: dict[int, Labels] = {}
        for ep in endpoints.list():
            self._identity_for(ep)
        self._regenerate_all()

    # --- repository ---------------------------------------------------------
    @property
    def revision(self) -> int:
        return self.repo.revision

    async def import_rules(self, raw: bytes) -> int:
        rev = self.repo.add(raw)
        self._regenerate_all()
        return rev

    def get_rules(self, labels: list[str]) -> list[dict]:
        return [r.to_dict() for r in self.repo.get(labels)]

    async def delete_rules(self, labels: list[str], all: bool) -> tuple[int, int]:
        if labels:
            out = self.repo.delete_by_labels(labels)
        elif all:
            out = self.repo.delete_all()
        else:
            raise PolicyRepositoryError("refusing to delete rules without labels")
        self._regenerate_all()
        return out

    async def wait(self, revision: int, timeout: float) -> bool:
        return all(ep.policy_revision >= revision for ep in self.endpoints.list())

    def trace(self, src_labels: list[str], dst_labels: list[str], dport: int | None,
              proto: str) -> tuple[str, list[str]]:
        return trace_policy(self.repo, src_labels, dst_labels, dport, proto,
                            {i: l.to_strings() for i, l in self._ids.items()}, self._enforcement)

    # --- identities ------------------------------------------------------------
    def _identity_for(self, ep: Endpoint) -> None:
        labels = Labels.parse(ep.labels)
        for num, known in self._ids.items():
            if known == labels:
                ep.identity = num
                return
        num = max([255, *self._ids]) + 1
        self._ids[num] = labels
        ep.identity = num

    def identities(self) -> list[Identity]:
        out = [Identity(n, l) for n, l in reserved.all_reserved().items()]
        return out + [Identity(n, l) for n, l in sorted(self._ids.items())]

    def identity(self, id: int) -> Identity | None:
        return next((i for i in self.identities() if i.id == id), None)

    # --- enforcement and endpoints -------------------------------------------------
    @property
    def enforcement(self) -> str:
        return self._enforcement

    async def set_enforcement(self, mode: str) -> None:
        if mode not in ENFORCEMENT_MODES:
            raise ValueError(f"invalid policy enforcement mode {mode!r}")
        self._enforcement = mode
        self._regenerate_all()

    async def update_endpoint_labels(self, ep: Endpoint, add: list[str], delete: list[str]) -> None:
        try:
            new = {str(Label.parse(s, "container")) for s in add}
            gone = {str(Label.parse(s, "container")) for s in delete}
        except ValueError as exc:
            raise ValueError(f"invalid label: {exc}") from None
        ep.labels = sorted((set(ep.labels) - gone) | new)
        self._identity_for(ep)
        self._regenerate_all()

    async def update_endpoint_config(self, ep: Endpoint, changes: dict[str, str]) -> None:
        for key, value in changes.items():
            if key != "PolicyEnforcement":
                raise ValueError(f"unknown option {key}")
            if value not in ENFORCEMENT_MODES:
                raise ValueError(f"invalid value {value}")
        ep.policy_enforcement = changes.get("PolicyEnforcement", ep.policy_enforcement)
        self._regenerate_all()

    def _regenerate_all(self) -> None:
        for ep in self.endpoints.list():
            ep.policy_revision = self.repo.revision


class FakeEndpoints:
    def __init__(self, eps: list[Endpoint]) -> None:
        self.eps = {ep.id: ep for ep in eps}

    def list(self) -> list[Endpoint]:
        return sorted(self.eps.values(), key=lambda e: e.id)

    def lookup(self, ref: str) -> Endpoint:
        kind, _, value = ref.partition(":") if ":" in ref else ("cilium-local", "", ref)
        if kind == "container-name":
            for ep in self.eps.values():
                if ep.container_name == value:
                    return ep
        elif kind != "cilium-local":
            raise EndpointError(f"invalid endpoint reference {ref!r}: unknown prefix {kind!r}", 400)
        elif not value.isdigit():
            raise EndpointError(f"invalid endpoint ID {ref!r}: expected a number or a prefixed reference", 400)
        elif int(value) in self.eps:
            return self.eps[int(value)]
        raise EndpointError(f"endpoint {ref} not found", 404)


def make_endpoint(id: int, name: str, labels: list[str], ipv4: str) -> Endpoint:
    return Endpoint(id=id, docker_endpoint_id=f"dock{id:060d}", docker_network_id="net0",
                    ifname=f"lxc{id}", ifindex=100 + id, peer_ifname="tmp", mac="02:00:00:00:00:01",
                    host_mac="02:00:00:00:00:02", ipv4=ipv4, ipv6=f"f00d::a02:0:0:{id:x}",
                    container_id=f"c{id:063d}", container_name=name, labels=sorted(labels))


@dataclass
class FakeDaemon:
    endpoints: FakeEndpoints
    policy: FakeRegenerator = field(init=False)
    config: DaemonConfig = field(default_factory=DaemonConfig)
    mtu: int = 1500

    def __post_init__(self) -> None:
        self.policy = FakeRegenerator(self.endpoints, self.config.policy_enforcement)

    def host_addressing(self) -> dict[str, Any]:
        return {"ipv4": {"enabled": True, "ip": "10.2.0.1", "alloc-range": "10.2.0.0/16"},
                "ipv6": {"enabled": True, "ip": "f00d::a02:0:0:1", "alloc-range": "f00d::a02:0:0:0/96"},
                "node-ip": "192.0.2.2"}

    async def status(self) -> dict[str, Any]:
        return {"kvstore": {"state": "Ok", "msg": "local"}, "container-runtime": {"state": "Ok", "msg": ""},
                "kubernetes": {"state": "Disabled"}, "cilium": {"state": "Ok", "msg": "fake"},
                "endpoints": len(self.endpoints.list()), "ipam": {"ipv4": "2/65535", "ipv6": "2/65535"}}


def make_daemon() -> FakeDaemon:
    return FakeDaemon(FakeEndpoints([
        make_endpoint(1001, "app1", ["container:id=app1"], "10.2.0.2"),
        make_endpoint(1002, "app2", ["container:id=app2"], "10.2.0.3"),
    ]))
