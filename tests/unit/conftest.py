from __future__ import annotations

import pytest
from aiohttp.test_utils import TestClient, TestServer

from docker_cilium.api.app import build_app as build_api_app
from docker_cilium.endpoint.manager import EndpointManager
from docker_cilium.ipam.allocator import IPAM
from docker_cilium.ipam.ranges import NodeAddressing
from docker_cilium.kvstore.sqlite import SQLiteBackend
from docker_cilium.plugin.app import build_app
from docker_cilium.plugin.ipam import IpamDriver
from docker_cilium.plugin.network import NetworkDriver
from tests.unit.fakes import FakeLinks
from tests.unit.unit_daemon import UnitDaemon

# The capture was taken on a node whose IP ended in .77: same ranges here.
NODE = NodeAddressing.derive("192.0.2.77")


@pytest.fixture
async def store(tmp_path):
    s = SQLiteBackend(str(tmp_path / "node.db"))
    await s.connect()
    yield s
    await s.close()


@pytest.fixture
async def plugin(store):
    """(client, manager, links, ipam) around the real plugin app and a fake kernel."""
    links = FakeLinks()
    ipam = IPAM(store, NODE)
    mgr = EndpointManager(store, links, None, NODE, ipam, 1400)  # type: ignore[arg-type]
    app = build_app(NetworkDriver(mgr), IpamDriver(ipam))
    client = TestClient(TestServer(app))
    await client.start_server()
    yield client, mgr, links, ipam
    await client.close()


@pytest.fixture
async def daemon(tmp_path):
    """The agent's own objects minus the kernel (UnitDaemon), started and stopped."""
    d = await UnitDaemon(str(tmp_path)).start()
    yield d
    await d.stop()


@pytest.fixture
async def api(daemon):
    """(client, daemon): the real REST app around ``daemon``."""
    client = TestClient(TestServer(build_api_app(daemon)))
    await client.start_server()
    yield client, daemon
    daemon.monitor.close()  # as the agent's stop does: open monitor streams end now
    await client.close()


@pytest.fixture
async def daemon_plugin(daemon):
    """A client of the real plugin app around ``daemon``'s manager and IPAM."""
    client = TestClient(TestServer(build_app(NetworkDriver(daemon.endpoints), IpamDriver(daemon.ipam))))
    await client.start_server()
    yield client
    await client.close()
