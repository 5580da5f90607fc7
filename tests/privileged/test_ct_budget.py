"""The per-endpoint budget of unreplied conntrack entries (cilium_ct_budget,
bpf_src/lib/conntrack.h) on the real kernel, with a datapath built with a
budget of 64 (conftest ``small_ct``):

* replies give the units back: many more answered flows than the budget all
  work, and the count ends where it began;
* a count driven below zero (two CPUs refunding the last unit at once, or
  refunds after a window reset) does not lock the endpoint out;
* refunds stop at minus the budget: double refunds (two CPUs handling one
  entry's first replies) cannot lend an endpoint units without end;
* zeroing an endpoint's slot (done when the endpoint is deleted, ids are
  reused) gives its id a fresh budget.
"""

from __future__ import annotations

import pytest

from docker_cilium.datapath.drop import DROP_CT_CREATE_FAILED
from docker_cilium.datapath.maps.ctmap import monotonic_seconds
from tests.packets import udp

pytestmark = pytest.mark.privileged

OK, TIMEOUT = 0, 2
BUDGET = 64


def created_failed(dp) -> int:
    return dp.maps.metrics.count(DROP_CT_CREATE_FAILED)


@pytest.mark.parametrize("kind", ["udp", "tcp"])
def test_replied_flows_give_their_budget_back(topo, small_ct, kind):
    """3x the budget of answered flows from A, one after the other: all pass."""
    dp, (a, b, c) = small_ct
    topo.serve(b, 8080)
    before = created_failed(dp)
    assert topo.run_tool(a, "many", kind, b.ipv4, 8080, 3 * BUDGET) == OK
    assert created_failed(dp) == before
    assert dp.maps.ct_budget.get(a.lxc_id).count == 0
    # distinct flows (the kernel may give a later socket an earlier one's port)
    flows = [e for e in dp.maps.ct.dump() if e.saddr == a.ipv4 and e.dport == 8080]
    assert len(flows) > 2 * BUDGET


def test_negative_count_does_not_lock_the_endpoint_out(topo, small_ct):
    """The slot as a double refund leaves it (-1; 0xFFFFFFFF unsigned): A
    still opens flows. Control: at the budget, A's new flows are refused."""
    dp, (a, b, c) = small_ct
    topo.serve(b, 8080)
    budget = dp.maps.ct_budget
    budget.set(a.lxc_id, monotonic_seconds(), BUDGET)
    before = created_failed(dp)
    assert topo.tcp(a, b.ipv4, 8080) == TIMEOUT
    assert created_failed(dp) > before
    budget.set(a.lxc_id, monotonic_seconds(), -1)
    assert topo.tcp(a, b.ipv4, 8080) == OK
    assert topo.udp(a, b.ipv4, 8080) == OK


def test_refunds_stop_at_minus_the_budget(topo, small_ct):
    """A's flows to B get B's first replies (raw UDP, B has no socket on the
    port): with the count at 5 a first reply gives one unit back (control);
    with the count at -BUDGET (the floor) it gives none, so refunds that
    outnumber A's entries (a first reply refunded on two CPUs at once) lend
    A at most BUDGET extra units per window."""
    dp, (a, b, c) = small_ct
    budget = dp.maps.ct_budget

    def answered(sport: int, count: int) -> int:
        budget.set(a.lxc_id, monotonic_seconds(), 0)
        assert topo.run_tool(a, "rawip", b.ipv4, 17, udp(sport, 9999, b"q").hex()) == OK
        assert budget.get(a.lxc_id).count == 1     # A's entry charged
        budget.set(a.lxc_id, monotonic_seconds(), count)
        assert topo.run_tool(b, "rawip", a.ipv4, 17, udp(9999, sport, b"r").hex()) == OK
        return budget.get(a.lxc_id).count

    assert answered(40001, 5) == 4
    assert answered(40002, -BUDGET) == -BUDGET


def test_zeroed_slot_gives_a_fresh_budget(topo, small_ct):
    """A's budget used up by unanswered flows; reset (endpoint deleted, its
    id reused): flows open again."""
    dp, (a, b, c) = small_ct
    hole4, _ = topo.blackhole(250)
    topo.serve(b, 8080)
    assert topo.run_tool(a, "tcpraw", hole4, 443, BUDGET + 10) == OK
    assert dp.maps.ct_budget.get(a.lxc_id).count == BUDGET
    assert topo.udp(a, b.ipv4, 8080) == TIMEOUT
    dp.maps.ct_budget.reset(a.lxc_id)
    assert dp.maps.ct_budget.get(a.lxc_id).count == 0
    assert topo.udp(a, b.ipv4, 8080) == OK
