"""The container datapath's load balancer (bpf_src/lib/lb_lxc.h) on real packets.

Services are written with LBMap into the real pinned maps; clients and
backends are namespaces wired like containers. Clients use connected
sockets: a reply is only taken if it comes from the VIP and port the client
sent to (reverse NAT), and the kernels of both ends drop a segment or
datagram with a wrong checksum, so an answer proves the translation both
ways with correct checksums.
"""

from __future__ import annotations

import subprocess

import pytest

from docker_cilium.datapath import drop
from docker_cilium.datapath.maps.eventsmap import NOTIFY_DROP
from docker_cilium.datapath.maps.lbmap import L4Addr
from docker_cilium.datapath.maps.metricsmap import METRIC_EGRESS
from tests.helpers import LineProcess
from tests.privileged.conftest import PYTHON, Container, Topology

PORT = 8080


def _vips(topo: Topology) -> tuple[str, str]:
    """Frontends no route leads to: only the datapath gives them meaning."""
    return f"10.198.{topo.octet}.10", f"fd98::{topo.octet:x}:10"


def _ask(topo: Topology, c: Container, kind: str, dst: str, port: int, n: int) -> list[str]:
    res = subprocess.run(["ip", "netns", "exec", c.netns, PYTHON, topo.tool, "ask", kind, dst,
                          str(port), str(n)], capture_output=True, text=True, timeout=60)
    return res.stdout.split()


def _backends(topo: Topology, *cs: Container) -> None:
    for c in cs:
        topo.serve(c, c.name, PORT, mode="idserve")


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("kind", ["tcp", "udp"])
def test_vip_balances_over_both_backends(topo, datapath, abc, family, kind):
    a, b, c = abc
    _backends(topo, b, c)
    vip = _vips(topo)[0 if family == 4 else 1]
    addr = (lambda x: x.ipv4) if family == 4 else (lambda x: x.ipv6)
    proto = kind.upper()
    datapath.maps.lb.upsert_service(5, L4Addr(vip, 80, proto),
                                    [(51, L4Addr(addr(b), PORT, proto)), (52, L4Addr(addr(c), PORT, proto))])
    answers = _ask(topo, a, kind, vip, 80, 24)
    assert len(answers) == 24 and set(answers) == {"b", "c"}, answers
    # the VIP's port only: another port of the VIP is no service
    assert _ask(topo, a, kind, vip, 81, 1) == ["-"]


@pytest.mark.parametrize("family", [4, 6])
def test_icmp_error_from_backend_reaches_the_client_socket(topo, datapath, abc, family):
    """UDP to a backend port nobody listens on: the backend's port-unreachable,
    translated back, makes the client's socket (connected to the VIP) fail
    with ECONNREFUSED (nettool udp: 3) instead of waiting for a reply (2)."""
    a, b, _c = abc
    vip = _vips(topo)[0 if family == 4 else 1]
    addr = b.ipv4 if family == 4 else b.ipv6
    datapath.maps.lb.upsert_service(13, L4Addr(vip, 53, "UDP"), [(131, L4Addr(addr, 5999, "UDP"))])
    assert topo.udp(a, vip, 53) == 3


def test_backend_outside_the_endpoints_replies_through_to_container(topo, datapath, abc):
    """A backend the stack routes to (a host process on the router address):
    its replies reach the client through to-container, which translates them."""
    a, _b, _c = abc
    vip = _vips(topo)[0]
    host = LineProcess(PYTHON, topo.tool, "idserve", "host", "18931")
    try:
        datapath.maps.lb.upsert_service(6, L4Addr(vip, 80), [(61, L4Addr(topo.router4, 18931))])
        assert _ask(topo, a, "tcp", vip, 80, 3) == ["host"] * 3
    finally:
        host.close()


def test_no_backend_drops_158(topo, datapath, abc):
    """In the metrics and as a monitor drop event naming the client."""
    a, b, _c = abc
    _backends(topo, b)
    vip = _vips(topo)[0]
    metrics = datapath.maps.metrics
    before = metrics.count(drop.DROP_NO_SERVICE, METRIC_EGRESS)
    datapath.maps.lb.upsert_service(7, L4Addr(vip, 80, "UDP"), [])
    reader = datapath.maps.event_reader(page_cnt=64)
    try:
        assert _ask(topo, a, "udp", vip, 80, 3) == ["-"] * 3
        events = []
        while got := reader.poll(300):
            events += got
    finally:
        reader.close()
    assert metrics.count(drop.DROP_NO_SERVICE, METRIC_EGRESS) - before == 3
    drops = [e for e in events if e.type == NOTIFY_DROP and e.subtype == drop.DROP_NO_SERVICE]
    assert len(drops) == 3 and {(e.source, e.src_label) for e in drops} == {(a.lxc_id, a.identity)}
    datapath.maps.lb.upsert_service(7, L4Addr(vip, 80, "UDP"), [(71, L4Addr(b.ipv4, PORT, "UDP"))])
    assert _ask(topo, a, "udp", vip, 80, 1) == ["b"]


def test_removed_backend_keeps_its_connection_new_ones_move(topo, datapath, abc):
    a, b, c = abc
    _backends(topo, b, c)
    vip = _vips(topo)[0]
    lb = datapath.maps.lb
    lb.upsert_service(8, L4Addr(vip, 80), [(81, L4Addr(b.ipv4, PORT))])
    conv = LineProcess("ip", "netns", "exec", a.netns, PYTHON, topo.tool, "converse", vip, "80")
    say = conv.say
    try:
        assert say() == "b"
        # b leaves the service (its backend entry stays while connections use it)
        lb.upsert_service(8, L4Addr(vip, 80), [(82, L4Addr(c.ipv4, PORT))])
        assert _ask(topo, a, "tcp", vip, 80, 6) == ["c"] * 6
        assert say() == "b"
        # once the backend entry is gone the connection is reset by the new
        # backend (it knows no such connection) instead of hanging
        assert lb.delete_backend(81, 4)
        assert say() == "closed"
    finally:
        conv.close()


@pytest.mark.parametrize("family", [4, 6])
def test_hairpin_backend_is_the_client(topo, datapath, abc, family):
    a, b, _c = abc
    _backends(topo, a, b)
    vip = _vips(topo)[0 if family == 4 else 1]
    addr = a.ipv4 if family == 4 else a.ipv6
    datapath.maps.lb.upsert_service(9, L4Addr(vip, 80), [(91, L4Addr(addr, PORT))])
    assert _ask(topo, a, "tcp", vip, 80, 3) == ["a"] * 3
    # another client of the same backend is not rewritten
    assert _ask(topo, b, "tcp", vip, 80, 1) == ["a"]
    datapath.maps.lb.upsert_service(10, L4Addr(vip, 53, "UDP"), [(92, L4Addr(addr, PORT, "UDP"))])
    assert _ask(topo, a, "udp", vip, 53, 2) == ["a"] * 2


def test_policy_applies_to_the_chosen_backend(topo, datapath, abc):
    """c enforces ingress and allows nobody: the VIP reaches only b."""
    a, b, c = abc
    _backends(topo, b, c)
    datapath.maps.endpoints.upsert(c.endpoint(ingress=True))
    vip = _vips(topo)[0]
    datapath.maps.lb.upsert_service(11, L4Addr(vip, 80), [(111, L4Addr(b.ipv4, PORT)),
                                                          (112, L4Addr(c.ipv4, PORT))])
    answers = _ask(topo, a, "tcp", vip, 80, 16)
    assert "b" in answers and "c" not in answers and "-" in answers, answers


def test_hairpin_replies_refund_the_ct_budget(topo, small_ct):
    """Each answered connection gives its unit of the endpoint's unreplied-entry
    budget back (64 here), hairpin ones too: their reply goes to the loopback
    address, not to the endpoint that was charged."""
    dp, (a, _b, _c) = small_ct
    _backends(topo, a)
    vip = _vips(topo)[0]
    dp.maps.lb.upsert_service(12, L4Addr(vip, 80), [(121, L4Addr(a.ipv4, PORT))])
    answers = _ask(topo, a, "tcp", vip, 80, 100)
    assert answers == ["a"] * 100, answers.index("-")
