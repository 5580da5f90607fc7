"""The endpoint state machine: every change of state goes through the checked
transition, including restore and a failed restore."""

from __future__ import annotations

import json

import pytest

from docker_cilium.endpoint.manager import EP_PREFIX, EndpointManager
from docker_cilium.endpoint.model import Endpoint, InvalidTransition, State
from docker_cilium.ipam.allocator import IPAM
from tests.unit.conftest import NODE
from tests.unit.fakes import FakeLinks


def _endpoint(state: State) -> Endpoint:
    return Endpoint(id=7, docker_endpoint_id="e" * 64, docker_network_id="n" * 64, ifname="lxc7",
                    ifindex=70, peer_ifname="tmp7", mac="02:00:00:00:00:07", host_mac="02:00:00:00:00:70",
                    ipv4="10.77.0.7", state=state)


def test_illegal_transition_raises_and_changes_nothing() -> None:
    ep = _endpoint(State.DISCONNECTED)
    with pytest.raises(InvalidTransition, match="disconnected -> ready is not allowed"):
        ep.set_state(State.READY, "must not happen")
    assert ep.state == State.DISCONNECTED
    assert ep.status_log == []


def test_record_restores_as_restoring_whatever_it_says() -> None:
    for recorded in (State.READY, State.REGENERATING, State.NOT_READY):
        record = _endpoint(recorded).to_record()
        assert Endpoint.from_record(json.loads(json.dumps(record))).state == State.RESTORING


class FailingHooks:
    """A datapath whose regeneration fails, as a broken BPF map write would."""

    async def endpoint_created(self, ep: Endpoint) -> None:
        ep.set_state(State.WAITING_TO_REGENERATE, "identity resolved")
        ep.set_state(State.REGENERATING, "writing datapath maps")
        raise OSError("map update failed")

    async def endpoint_changed(self, ep: Endpoint) -> None: ...
    async def endpoint_deleted(self, ep: Endpoint) -> None: ...
    async def regenerate(self, ep: Endpoint) -> None: ...


async def test_failed_restore_is_a_logged_transition(store) -> None:
    ep = _endpoint(State.READY)
    await store.put(EP_PREFIX + ep.docker_endpoint_id, json.dumps(ep.to_record()).encode())
    links = FakeLinks()
    links.links[ep.ifname] = 71  # the interface survived the agent restart
    mgr = EndpointManager(store, links, None, NODE, IPAM(store, NODE), 1400,  # type: ignore[arg-type]
                          FailingHooks())
    await mgr.restore()
    await mgr.restore_datapath()
    restored = mgr.endpoints[ep.docker_endpoint_id]
    assert restored.state == State.NOT_READY
    assert restored.status_log[-1]["state"] == "not-ready"
    assert restored.status_log[-1]["message"] == "restore failed: map update failed"
    saved = json.loads((await store.get(EP_PREFIX + ep.docker_endpoint_id)).decode())
    assert saved["state"] == "not-ready"
