"""libnetwork NetworkDriver calls -> EndpointManager operations.

Nothing here touches the kernel or calls the Docker API: dockerd may be
blocked waiting for our reply (a synchronous Docker API call from Join is the
deadlock Calico and Cilium hit). Container labels arrive separately through
the event watcher in ``docker_cilium.workloads``.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from docker_cilium.endpoint.manager import EndpointManager
from docker_cilium.errors import BadRequest
from docker_cilium.portmap.binding import PORTMAP_OPTION
from docker_cilium.portmap.manager import PortMapManager
from docker_cilium.plugin.schemas import (
    AllocateNetworkRequest,
    CreateEndpointRequest,
    CreateNetworkRequest,
    DiscoveryNotification,
    Empty,
    EndpointRequest,
    JoinRequest,
    NetworkRequest,
    ProgramExternalConnectivityRequest,
)

Reply = dict[str, Any]


def _check_families(req: CreateNetworkRequest) -> None:
    """IPv4Data must carry IPv4 pools and gateways, IPv6Data IPv6 ones."""
    for key, family, datas in (("IPv4Data", 4, req["IPv4Data"]), ("IPv6Data", 6, req["IPv6Data"])):
        for i, data in enumerate(datas):
            for name, value in (("Pool", data["Pool"]), ("Gateway", data["Gateway"])):
                if value and ipaddress.ip_interface(value).version != family:
                    kind = "subnet" if name == "Pool" else "address"
                    raise BadRequest(f"{key}[{i}].{name}: {value} is not an IPv{family} {kind}")


class NetworkDriver:
    def __init__(self, endpoints: EndpointManager, ports: PortMapManager | None = None) -> None:
        self.endpoints = endpoints
        self.ports = ports  # None: nothing is published (-p is acknowledged and ignored)

    async def get_capabilities(self, _: Empty) -> Reply:
        return {"Scope": "local", "ConnectivityScope": "local"}

    async def create_network(self, req: CreateNetworkRequest) -> Reply:
        _check_families(req)
        await self.endpoints.create_network(req["NetworkID"], req["IPv4Data"], req["IPv6Data"], req["Options"])
        return {}

    async def delete_network(self, req: NetworkRequest) -> Reply:
        await self.endpoints.delete_network(req["NetworkID"])
        return {}

    async def create_endpoint(self, req: CreateEndpointRequest) -> Reply:
        iface = req["Interface"]
        ep, chose_mac = await self.endpoints.create_endpoint(
            req["NetworkID"], req["EndpointID"], iface["Address"], iface["AddressIPv6"], iface["MacAddress"],
        )
        # Echo only what dockerd left empty: changing a value it set makes it
        # fail with "driver modified interface address/MAC".
        return {"Interface": {"MacAddress": ep.mac}} if chose_mac else {}

    async def endpoint_oper_info(self, req: EndpointRequest) -> Reply:
        ep = self.endpoints.by_docker_id(req["EndpointID"], req["NetworkID"])
        value = {"id": ep.id, "ifname": ep.ifname, "identity": ep.identity, "state": ep.state.value}
        if self.ports is not None:
            # The key and shape dockerd's own drivers report (20.10 reads it only from them).
            value[PORTMAP_OPTION] = [m.to_libnetwork() for m in self.ports.mappings(ep.docker_endpoint_id)]
        return {"Value": value}

    async def delete_endpoint(self, req: EndpointRequest) -> Reply:
        await self.endpoints.delete_endpoint(req["NetworkID"], req["EndpointID"])
        return {}

    async def join(self, req: JoinRequest) -> Reply:
        info = await self.endpoints.join(req["NetworkID"], req["EndpointID"], req["SandboxKey"])
        reply: Reply = {
            "InterfaceName": {"SrcName": info.src_name, "DstPrefix": "cilium"},
            "StaticRoutes": [
                {"Destination": r.destination, "RouteType": r.route_type, "NextHop": r.next_hop}
                for r in info.routes
            ],
            "DisableGatewayService": True,
        }
        if info.gateway4:
            reply["Gateway"] = info.gateway4
        if info.gateway6:
            reply["GatewayIPv6"] = info.gateway6
        return reply

    async def leave(self, req: EndpointRequest) -> Reply:
        await self.endpoints.leave(req["NetworkID"], req["EndpointID"])
        return {}

    async def program_external_connectivity(self, req: ProgramExternalConnectivityRequest) -> Reply:
        if self.ports is not None:
            ep = self.endpoints.by_docker_id(req["EndpointID"], req["NetworkID"])
            await self.ports.program(ep, req["Options"])
        return {}

    async def revoke_external_connectivity(self, req: EndpointRequest) -> Reply:
        if self.ports is not None:
            await self.ports.revoke(req["EndpointID"])
        return {}

    async def discover(self, req: DiscoveryNotification) -> Reply:
        return {}

    async def allocate_network(self, req: AllocateNetworkRequest) -> Reply:
        return {"Options": {}}

    async def free_network(self, req: NetworkRequest) -> Reply:
        return {}

    def routes(self) -> dict[str, Any]:
        p = "NetworkDriver."
        return {
            p + "GetCapabilities": self.get_capabilities,
            p + "CreateNetwork": self.create_network,
            p + "DeleteNetwork": self.delete_network,
            p + "CreateEndpoint": self.create_endpoint,
            p + "EndpointOperInfo": self.endpoint_oper_info,
            p + "DeleteEndpoint": self.delete_endpoint,
            p + "Join": self.join,
            p + "Leave": self.leave,
            p + "ProgramExternalConnectivity": self.program_external_connectivity,
            p + "RevokeExternalConnectivity": self.revoke_external_connectivity,
            p + "DiscoverNew": self.discover,
            p + "DiscoverDelete": self.discover,
            p + "AllocateNetwork": self.allocate_network,
            p + "FreeNetwork": self.free_network,
        }
