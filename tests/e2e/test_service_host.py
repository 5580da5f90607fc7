"""Issue 9 acceptance: "A host process reaches the VIP" of a service made with
Cilium's CLI (`cilium service update --id N --frontend VIP:PORT --backends
IP:PORT,...`), IPv4 and IPv6, through the socket LB (bpf_sock.c); removing a
backend moves new connections, `service delete` ends it, and services come
back after an agent restart. The client is this test process (host netns).

The VIPs are blackholed on the host for the test (tests/e2e/vips.py).
"""

from __future__ import annotations

import pytest

from tests.e2e.conftest import create_network, net_settings, run_container
from tests.e2e.vips import VIP4, VIP6, blackholed_vips, http_get, server_cmd


@pytest.fixture
def vips():
    with blackholed_vips():
        yield


def _bodies(vip: str, n: int = 16) -> set[str]:
    got = [http_get(vip) for _ in range(n)]
    assert {peer for _, peer in got} <= {(vip, 80)}, got
    return {body for body, _ in got}


def test_host_process_reaches_service_vip(agent, vips, names):
    net = names("svchost")
    create_network(net, "--ipv6", "--subnet", "::1/112", "--driver", "cilium", "--ipam-driver", "cilium")
    sa = net_settings(run_container(names("a"), net, cmd=server_cmd("a")), net)
    sb = net_settings(run_container(names("b"), net, cmd=server_cmd("b")), net)
    a4, b4 = sa["IPAddress"], sb["IPAddress"]
    a6, b6 = sa["GlobalIPv6Address"], sb["GlobalIPv6Address"]

    agent.cli("service", "update", "--id", "11", "--frontend", f"{VIP4}:80", "--backends", f"{a4}:80,{b4}:80")
    agent.cli("service", "update", "--id", "12", "--frontend", f"[{VIP6}]:80",
              "--backends", f"[{a6}]:80,[{b6}]:80")
    assert _bodies(VIP4) == {"backend-a", "backend-b"}
    assert _bodies(VIP6) == {"backend-a", "backend-b"}

    agent.cli("service", "update", "--id", "11", "--frontend", f"{VIP4}:80", "--backends", f"{b4}:80")
    assert _bodies(VIP4) == {"backend-b"}

    agent.stop()
    agent.start()  # services are restored into the maps before the agent serves
    assert _bodies(VIP4, 4) == {"backend-b"}
    assert _bodies(VIP6) == {"backend-a", "backend-b"}

    agent.cli("service", "delete", "11")
    agent.cli("service", "delete", "12")
    # The VIPs are blackholed: untranslated, a connect fails (and has no peer).
    after = [http_get(vip) for vip in (VIP4, VIP4, VIP6, VIP6)]
    assert all(body.startswith("error:") and peer == () for body, peer in after), after
