"""The ingress proxy finds the source behind a connection our egress proxy opened."""

from __future__ import annotations

import socket

from docker_cilium.proxy.peers import Peer
from docker_cilium.proxy.upstreams import EgressUpstreams


def test_source_by_family_and_port():
    ups = EgressUpstreams()
    prod = Peer(identity=300, endpoint_id=7)
    ups.add(socket.AF_INET, 40000, prod)
    assert ups.source(("10.2.0.1", 40000)) == prod
    assert ups.source(("::ffff:10.2.0.1", 40000)) == prod   # a dual-stack listener's view
    assert ups.source(("f00d::a02:0:0:1", 40000)) is None   # another family's port
    assert ups.source(("10.2.0.1", 40001)) is None
    ups.remove(socket.AF_INET, 40000)
    assert ups.source(("10.2.0.1", 40000)) is None and len(ups) == 0
