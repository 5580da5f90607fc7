"""The agent's own objects, minus the kernel, for API and CLI unit tests.

Everything behind the API is real: EndpointManager, IPAM, the identity
allocator on a SQLite store, the identity cache, the ipcache's CIDR
identities, the policy manager and the Regenerator. Only netlink (FakeLinks)
and the BPF maps (no datapath, no ipcache map) are absent, so these tests
follow the real label, identity and enforcement semantics instead of a
stand-in's. It has no agent status: /v1/healthz answers 503 here, and the
real Daemon.status is checked on a real agent (tests/e2e/test_etcd_agent.py).
"""

from __future__ import annotations

import json
import os
from typing import Any

from docker_cilium.agent.config import DaemonConfig
from docker_cilium.agent.options import RuntimeOptions, agent_options
from docker_cilium.endpoint.manager import EndpointManager
from docker_cilium.errors import Unavailable
from docker_cilium.endpoint.regenerator import Regenerator
from docker_cilium.identity.allocator import IdentityAllocator
from docker_cilium.identity.cache import IdentityCache
from docker_cilium.ipam.allocator import IPAM
from docker_cilium.ipam.ranges import NodeAddressing, node_element
from docker_cilium.ipcache import IPCache
from docker_cilium.kvstore.sqlite import SQLiteBackend
from docker_cilium.monitor.hub import MonitorHub
from docker_cilium.monitor.policy_events import PolicyEvents
from docker_cilium.policy.manager import PolicyManager
from docker_cilium.prefilter import PreFilter
from docker_cilium.service.manager import ServiceManager
from tests.unit.fakes import FakeLinks, FakeTries

NODE = NodeAddressing.derive("192.0.2.2")  # 10.2.0.0/16, f00d::a02:0:0:0/96
NETWORK = "n" * 64
# (endpoint ID = low 16 bits of the IPv6 address, container name, labels, IPv4)
ENDPOINTS = [(1001, "app1", ["container:id=app1"], "10.2.0.2"),
             (1002, "app2", ["container:id=app2"], "10.2.0.3")]


class UnitDaemon:
    def __init__(self, workdir: str) -> None:
        self.workdir = workdir
        self.config = DaemonConfig(lib_dir=workdir)
        self.mtu = 1500
        self.monitor = MonitorHub()  # agent events only: no datapath here
        self.prefilter: PreFilter | None = None  # set in start(): a deny list over FakeTries

    async def start(self) -> "UnitDaemon":
        self.store = SQLiteBackend(os.path.join(self.workdir, "node.db"))
        await self.store.connect()
        self.prefilter = PreFilter(self.store, FakeTries(), "unit0", "native")
        await self.prefilter.restore()
        self.allocator = IdentityAllocator(self.store, "unit", monitor=self.monitor)
        await self.allocator.start()
        self.ipam = IPAM(self.store, NODE)
        ipcache = IPCache(self.store, None)
        await ipcache.start([])
        self.identities = IdentityCache(self.allocator, ipcache)
        self.policy = PolicyManager(self.store, ipcache, self.identities, self.config.policy_enforcement)
        await self.policy.start()
        self.options = RuntimeOptions(self.store)
        for option in agent_options(self.policy, self.config):
            self.options.register(option)
        await self.options.restore()
        self.regenerator = Regenerator(self.policy, self.allocator, self.identities, ipcache, None,
                                       monitor=self.monitor)
        PolicyEvents(self.policy, self.monitor)
        self.services = ServiceManager(self.store, None)  # no LB maps here
        await self.services.restore()
        self.endpoints = EndpointManager(self.store, FakeLinks(), None, NODE, self.ipam, self.mtu,  # type: ignore[arg-type]
                                         self.regenerator)
        await self.endpoints.create_network(NETWORK, [{"AddressSpace": "CiliumLocal", "Pool": "0.0.0.0/0",
                                                       "Gateway": f"{NODE.router4}/32"}], [], {})
        for eid, name, labels, ipv4 in ENDPOINTS:
            docker_id = f"{eid:064d}"
            await self.endpoints.create_endpoint(NETWORK, docker_id, f"{ipv4}/32", f"f00d::a02:0:0:{eid:x}/128", "")
            await self.endpoints.update_container(docker_id, f"c{eid:063d}", name, labels)
        return self

    async def stop(self) -> None:
        await self.regenerator.close()
        await self.allocator.close()
        await self.store.close()

    def endpoint(self, eid: int):
        return self.endpoints.lookup(str(eid))

    async def status(self) -> dict[str, Any]:
        """No agent here (no datapath, no dockerd, no uptime): nothing honest to report."""
        raise Unavailable("the unit-test daemon has no agent status")

    def monitor_status(self) -> dict[str, Any]:
        """No datapath reader here: only agent events flow."""
        return self.monitor.status()

    def datapath_maps(self) -> None:
        return None  # no kernel here

    def nodes(self) -> dict[str, Any]:
        return {"self": "unit", "nodes-added": [node_element("unit", NODE, True)]}

    def host_addressing(self) -> dict[str, Any]:
        return {"ipv4": {"enabled": True, "ip": str(NODE.router4), "alloc-range": str(NODE.ipv4_range)},
                "ipv6": {"enabled": True, "ip": str(NODE.router6), "alloc-range": str(NODE.ipv6_range)},
                "node-ip": NODE.node_ip}


async def api_error(resp: Any, status: int) -> str:
    """The message of an API error reply, after checking its status and body."""
    text = await resp.text()
    assert resp.status == status, text
    body = json.loads(text)
    assert body["code"] == status
    return body["message"]
