"""What endpoint regeneration needs of the datapath, as Protocols: the
loaded ``loader.Datapath`` and its pinned maps satisfy them, and unit tests
pass in-memory maps instead of the kernel's."""

from __future__ import annotations

from typing import Iterable, Mapping, Protocol

from docker_cilium.datapath.maps.lxcmap import EndpointInfo
from docker_cilium.datapath.maps.policymap import PolicyEntry as MapPolicyEntry


class PolicyMapWriter(Protocol):
    """``cilium_policy``: the per-endpoint allow entries."""

    def set_endpoint_policy(self, lxc_id: int, entries: Iterable[MapPolicyEntry]) -> tuple[int, int]: ...
    def delete_endpoint(self, lxc_id: int) -> int: ...
    def endpoint_entries(self, lxc_id: int) -> list[MapPolicyEntry]: ...
    def check_fits(self, changes: Mapping[int, Iterable[MapPolicyEntry]]) -> None: ...


class EndpointMapWriter(Protocol):
    """``cilium_lxc``: the local endpoints, their identity and enforcement flags."""

    def upsert(self, ep: EndpointInfo) -> None: ...
    def delete(self, ifindex: int, ipv4: str | None = None, ipv6: str | None = None) -> None: ...


class ConntrackFlusher(Protocol):
    def flush_addresses(self, *addrs: str | None) -> int: ...


class ConntrackBudget(Protocol):
    """``cilium_ct_budget``: endpoint ids are reused, so a deleted endpoint's slot is zeroed."""

    def reset(self, lxc_id: int) -> None: ...


class EndpointMaps(Protocol):
    @property
    def policy(self) -> PolicyMapWriter: ...
    @property
    def endpoints(self) -> EndpointMapWriter: ...
    @property
    def ct(self) -> ConntrackFlusher: ...
    @property
    def ct_budget(self) -> ConntrackBudget: ...


class EndpointDatapath(Protocol):
    """The loaded datapath as regeneration uses it (``loader.Datapath``; a fake in unit tests)."""

    @property
    def maps(self) -> EndpointMaps | None: ...
    async def attach_async(self, ifindex: int) -> float: ...
