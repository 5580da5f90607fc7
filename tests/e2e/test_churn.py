"""Churn: 3 rounds of 30 containers on a dual-stack cilium network, started
and removed 10 at a time, with the agent kill -9ed (and restarted) while the
second round's second batch starts.

No address is ever held twice (by two running containers, or by two of the
agent's endpoints), every running container is the agent's endpoint with
dockerd's addresses, and afterwards the host and the agent's stores hold
what they held before the first container: no link, route, endpoint/policy/
ipcache map entry, conntrack entry, iptables rule, KV key or IPAM allocation
left behind (tests/e2e/churn.py reads each from the host itself).
"""

from __future__ import annotations

import time

import pytest

from tests.e2e.churn import (CHURN_AGENT_FLAGS, Batch, addresses, alloc_ranges, duplicates, leaks, remove_containers,
                             snapshot)
from tests.e2e.conftest import create_network, exec_, running_agent
from tests.helpers import wait_until

ROUNDS, PER_ROUND, AT_ONCE = 3, 30, 10
KILL_ROUND, KILL_BATCH = 1, 1
# Long enough for the batch's first calls to reach the agent, short enough
# that most of them are still in flight when it dies.
KILL_AFTER_S = 0.4
LABEL_SETS = 3  # containers share identities, as replicas do


def on_network(agent, net_id: str) -> list[dict]:
    return [e for e in agent.cli_json("endpoint", "list") if e["docker-network-id"] == net_id]


def agent_matches_docker(agent, net_id: str, addrs: dict[str, tuple[str, str]]) -> bool | str:
    """True when the agent's endpoints on the network are exactly the running
    containers, each with dockerd's addresses; else what differs."""
    eps = {e["container-name"]: (e["addressing"].get("ipv4"), e["addressing"].get("ipv6"))
           for e in on_network(agent, net_id)}
    return eps == addrs or f"agent {sorted(eps.items())} != docker {sorted(addrs.items())}"


@pytest.fixture(scope="module")
def agent(dockerd, tmp_path_factory):
    """The module's agent, with the churn's flags (a short reconcile grace)."""
    yield from running_agent(tmp_path_factory.mktemp("agent"), extra=CHURN_AGENT_FLAGS)


def test_churn_with_agent_kill9_leaks_nothing(agent, names):
    net = names("churn")
    net_id = create_network(net, "--ipv6", "--subnet", "::1/112", "--driver", "cilium", "--ipam-driver", "cilium")
    ranges = alloc_ranges(agent)
    router4 = agent.cli_json("config")["addressing"]["ipv4"]["ip"]
    ipam_before = agent.cli_json("status")["ipam"]["allocations"]
    before = snapshot(agent, ranges)
    churned: set[str] = set()
    failed = []
    t0 = time.monotonic()
    for rnd in range(ROUNDS):
        live: list[str] = []
        for b in range(PER_ROUND // AT_ONCE):
            batch = [names(f"r{rnd}b{b}c{i}") for i in range(AT_ONCE)]
            started = Batch(batch, net, router4, [f"churn=set{i % LABEL_SETS}" for i in range(AT_ONCE)])
            killed = rnd == KILL_ROUND and b == KILL_BATCH
            if killed:
                time.sleep(KILL_AFTER_S)
                agent.kill9()
                agent.start()
            results = started.results()
            # dockerd retries a plugin it cannot reach: only the batch the kill hit may lose a container.
            failed += [(r.name, r.error) for r in results if not r.ok and not killed]
            live += batch
            addrs = addresses(live, net)
            assert duplicates(addrs, on_network(agent, net_id)) == [], f"round {rnd} batch {b}"
            churned |= {ip for pair in addrs.values() for ip in pair if ip}
            if rnd == 0 and b == 0:
                # The leak checks below are not vacuous: containers fill these.
                mid = wait_until(lambda: (m := snapshot(agent, ranges)) and any(
                    e[0] in churned or e[1] in churned for e in m.ct) and m, timeout=10,
                    what="conntrack entries of the containers' pings")
                assert len(mid.map_keys["cilium_lxc"]) >= len(before.map_keys["cilium_lxc"]) + 2 * AT_ONCE
                assert len(mid.links - before.links) == AT_ONCE and mid.routes - before.routes
        assert failed == [], failed
        addrs = addresses(live, net)
        wait_until(lambda: agent_matches_docker(agent, net_id, addrs) is True, timeout=30,
                   what=f"round {rnd}: agent endpoints == running containers "
                        f"({agent_matches_docker(agent, net_id, addrs)})")
        # The datapath carries traffic between containers of different batches (after the restart too).
        first, last = addrs[live[0]], addrs[live[-1]]
        exec_(live[-1], "ping", "-c", "1", "-W", "2", first[0])
        exec_(live[0], "ping6", "-c", "1", "-W", "2", last[1])
        for b in range(0, len(live), AT_ONCE):
            remove_containers(live[b:b + AT_ONCE])
        wait_until(lambda: on_network(agent, net_id) == [], timeout=30, what=f"round {rnd}: endpoints gone")
        # The datapath is clean as soon as the containers are gone (before
        # ct-gc could expire a flow a missing flush left behind).
        assert leaks(before, snapshot(agent, ranges), churned, kv=False) == [], f"round {rnd}"
        print(f"[timing] churn round {rnd}: {time.monotonic() - t0:.1f} s")

    last: list[str] = []

    def clean() -> bool:
        nonlocal last
        last = leaks(before, snapshot(agent, ranges), churned)
        return not last
    # Identities without a reference leave at the next identity-gc (every 30 s).
    try:
        wait_until(clean, timeout=75, interval=1, what="the host as before")
    except AssertionError:
        raise AssertionError(f"leaked after {time.monotonic() - t0:.0f} s: {last}") from None
    assert agent.cli_json("status")["ipam"]["allocations"] == ipam_before
    print(f"[timing] churn + leak checks: {time.monotonic() - t0:.1f} s")
