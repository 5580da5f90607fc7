"""Regeneration with L7 rules: the real allocator, policy manager and
regenerator (in-memory maps as in test_regenerator), and a fake proxy that
records the redirects it is given and hands out ports like the real one (a
redirect that stays keeps its port)."""

from __future__ import annotations

import json
from typing import Mapping

import pytest

from docker_cilium import u8proto
from docker_cilium.datapath.maps.policymap import PolicyEntry
from docker_cilium.errors import APIError, BadRequest
from docker_cilium.policy.api.l7 import PortRuleHTTP
from docker_cilium.proxy.redirect import EndpointAddr, L7RulesByPeer, RedirectKey
from tests.unit.test_regenerator import Agent, _created, _endpoint, running_agent

TCP = u8proto.TCP
GET_PUBLIC = (PortRuleHTTP(method="GET", path="/public"),)


class FakeProxy:
    def __init__(self) -> None:
        self.redirects: dict[int, dict[RedirectKey, L7RulesByPeer]] = {}
        self.ports: dict[RedirectKey, int] = {}
        self.addrs: dict[int, EndpointAddr] = {}
        self.next_port = 10000
        self.fail: tuple[int, APIError] | None = None  # (endpoint, error): raised once
        self.removed: list[int] = []

    async def update_endpoint(self, ep: EndpointAddr,
                              redirects: Mapping[RedirectKey, L7RulesByPeer]) -> Mapping[RedirectKey, int]:
        if self.fail is not None and self.fail[0] == ep.id:
            err, self.fail = self.fail[1], None
            raise err
        assert all(k.endpoint_id == ep.id for k in redirects)
        for key in [k for k in self.ports if k.endpoint_id == ep.id and k not in redirects]:
            del self.ports[key]
        for key in redirects:
            if key not in self.ports:
                self.ports[key] = self.next_port
                self.next_port += 1
        self.redirects[ep.id] = dict(redirects)
        self.addrs[ep.id] = ep
        return {k: self.ports[k] for k in redirects}

    async def remove_endpoint(self, endpoint_id: int) -> None:
        self.removed.append(endpoint_id)
        self.redirects.pop(endpoint_id, None)
        for key in [k for k in self.ports if k.endpoint_id == endpoint_id]:
            del self.ports[key]


@pytest.fixture
async def proxy():
    return FakeProxy()


@pytest.fixture
async def agent(store, proxy):
    async with running_agent(store, proxy) as a:
        yield a


@pytest.fixture
async def no_proxy_agent(store):
    async with running_agent(store) as a:
        yield a


def _l7_policy(http: list[dict] | None, selected: str = "a", peer: str = "b") -> bytes:
    port_rule: dict = {"ports": [{"port": "80", "protocol": "TCP"}]}
    if http is not None:
        port_rule["rules"] = {"http": http}
    return json.dumps([{"endpointSelector": {"matchLabels": {"id": selected}},
                        "ingress": [{"fromEndpoints": [{"matchLabels": {"id": peer}}],
                                     "toPorts": [port_rule]}]}]).encode()


async def _three(agent: Agent):
    """Two servers with the same labels (they share one resolved policy) and a client."""
    b = _endpoint(3, "10.2.0.4", ["container:id=b"])
    a1 = _endpoint(1, "10.2.0.2", ["container:id=a"])
    a2 = _endpoint(2, "10.2.0.3", ["container:id=a"])
    for ep in (b, a1, a2):
        await _created(agent, ep)
    return a1, a2, b


async def test_l7_policy_gives_each_endpoint_its_redirect_and_port(agent, proxy) -> None:
    a1, a2, b = await _three(agent)
    await agent.policy.import_rules(_l7_policy([{"method": "GET", "path": "/public"}]))
    k1, k2 = RedirectKey(1, "ingress", 80, TCP), RedirectKey(2, "ingress", 80, TCP)
    assert proxy.redirects[1] == {k1: {b.identity: GET_PUBLIC}}
    assert proxy.redirects[2] == {k2: {b.identity: GET_PUBLIC}}
    assert proxy.addrs[1] == EndpointAddr(1, a1.identity, "10.2.0.2", None)
    p1, p2 = proxy.ports[k1], proxy.ports[k2]
    assert p1 != p2
    assert agent.dp.maps.policy.entries[1] == {PolicyEntry(b.identity, "ingress", 80, TCP, proxy_port=p1)}
    assert agent.dp.maps.policy.entries[2] == {PolicyEntry(b.identity, "ingress", 80, TCP, proxy_port=p2)}
    assert 3 not in proxy.redirects  # the client has no L7 policy: the proxy is not asked

    # An identity change regenerates through the other path: the ports stay.
    await agent.regen.regenerate_all()
    assert agent.dp.maps.policy.entries[1] == {PolicyEntry(b.identity, "ingress", 80, TCP, proxy_port=p1)}


async def test_replacing_l7_by_l4_removes_the_redirects(agent, proxy) -> None:
    a1, a2, b = await _three(agent)
    await agent.policy.import_rules(_l7_policy([{"method": "GET"}]))
    assert proxy.ports
    await agent.policy.delete_rules([], all=True)
    await agent.policy.import_rules(_l7_policy(None))
    assert proxy.redirects[1] == {} and proxy.redirects[2] == {} and not proxy.ports
    assert agent.dp.maps.policy.entries[1] == {PolicyEntry(b.identity, "ingress", 80, TCP)}


async def test_deleted_endpoint_removes_its_redirects(agent, proxy) -> None:
    a1, a2, b = await _three(agent)
    await agent.policy.import_rules(_l7_policy([{"method": "GET"}]))
    await agent.regen.endpoint_deleted(a1)
    assert proxy.removed == [1] and 1 not in proxy.redirects and 2 in proxy.redirects
    await agent.regen.endpoint_deleted(b)
    assert proxy.removed == [1]  # b never had redirects


async def test_proxy_failure_refuses_the_import_and_keeps_previous_state(agent, proxy) -> None:
    a1, a2, b = await _three(agent)
    await agent.policy.import_rules(_l7_policy([{"method": "GET"}]))
    before = {i: set(agent.dp.maps.policy.entries[i]) for i in (1, 2)}
    revision = agent.policy.revision
    redirects = {i: dict(proxy.redirects[i]) for i in (1, 2)}
    order = [ep.id for ep in agent.regen.endpoints.values()]
    proxy.fail = (order[-1], APIError("no free proxy port", 503))  # after the others took the new rules
    with pytest.raises(APIError, match="no free proxy port"):
        await agent.policy.import_rules(_l7_policy([{"method": "POST"}]))
    assert proxy.fail is None
    assert agent.policy.revision == revision
    assert {i: agent.dp.maps.policy.entries[i] for i in (1, 2)} == before
    assert {i: proxy.redirects[i] for i in (1, 2)} == redirects


async def test_without_proxy_l7_policy_is_refused_not_widened(no_proxy_agent) -> None:
    agent = no_proxy_agent
    a1, a2, b = await _three(agent)
    await agent.policy.import_rules(_l7_policy(None, peer="a"))
    before = set(agent.dp.maps.policy.entries[1])
    assert before
    with pytest.raises(BadRequest) as exc:
        await agent.policy.import_rules(_l7_policy([{"method": "GET"}]))
    assert str(exc.value) == ("endpoint 1: its policy has L7 rules (ingress 80/TCP) but the L7 proxy is "
                              "disabled (--enable-l7-proxy=false)")
    assert agent.dp.maps.policy.entries[1] == before
    assert all(e.proxy_port == 0 for e in before)
