"""Docker networks of this driver: create, delete and their host plumbing
(gateway addresses on cilium_host, masquerading for Docker-IPAM pools).

EndpointManager's network half, kept apart from the endpoint lifecycle; it
shares the manager's lock, store and node addressing, and a network record is
written only once plumbed.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import structlog

from docker_cilium.endpoint.network import Network, bare_ip, network_conflict, parse_mtu, pool_network
from docker_cilium.errors import BadRequest, Conflict, NotFound
from docker_cilium.ipam.allocator import CILIUM_ADDRESS_SPACES
from docker_cilium.kvstore import keys

if TYPE_CHECKING:
    from docker_cilium.endpoint.manager import EndpointManager
    from docker_cilium.plugin.schemas import IPAMData

log = structlog.get_logger(__name__)

NET_PREFIX = keys.NETWORKS


class NetworksMixin:
    """EndpointManager's network operations."""

    async def create_network(self: EndpointManager, network_id: str, ipv4_data: list[IPAMData], ipv6_data: list[IPAMData],
                             options: dict[str, Any]) -> Network:
        generic = options.get("com.docker.network.generic") or {}
        if not isinstance(generic, dict):
            raise BadRequest("Options.com.docker.network.generic must be an object")
        try:
            mtu = parse_mtu(generic, self.default_mtu,
                            ipv6=bool(options.get("com.docker.network.enable_ipv6")) or any(ipv6_data))
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        v4 = ipv4_data[0] if ipv4_data else {}
        v6 = ipv6_data[0] if ipv6_data else {}
        spaces = {d.get("AddressSpace", "") for d in (v4, v6) if d}
        net = Network(
            id=network_id,
            ipv6=bool(options.get("com.docker.network.enable_ipv6")) or bool(v6),
            cilium_ipam=bool(spaces) and spaces <= CILIUM_ADDRESS_SPACES,
            gateway4=bare_ip(v4.get("Gateway")),
            gateway6=bare_ip(v6.get("Gateway")),
            pool4=pool_network(v4.get("Pool")),
            pool6=pool_network(v6.get("Pool")),
            mtu=mtu,
            options={k: v for k, v in generic.items() if isinstance(k, str)},
        )
        if net.cilium_ipam and net.gateway4 is None:
            net.gateway4 = str(self.node.router4)
        if net.cilium_ipam and net.ipv6 and net.gateway6 is None:
            net.gateway6 = str(self.node.router6)
        async with self._lock:
            conflict = network_conflict(net, self.networks.values(), self.node)
            if conflict is not None:
                raise Conflict(conflict)
            self.networks[net.id] = net
        # Saved only once plumbed: a record that cannot be plumbed would fail
        # again at every start, for a network dockerd was told does not exist.
        try:
            await self._plumb_network(net)
            await self._save_network(net)
        except BaseException:
            async with self._lock:
                if self.networks.get(net.id) is net:
                    del self.networks[net.id]
            await self._unplumb_network(net)
            raise
        log.info("network.create", network=network_id[:12], cilium_ipam=net.cilium_ipam, mtu=mtu,
                 gateway4=net.gateway4, gateway6=net.gateway6)
        return net

    async def _plumb_network(self: EndpointManager, net: Network) -> None:
        for gw in net.host_gateways:
            await self.links.add_host_address(gw)
        if self.iptables is not None and not net.cilium_ipam:
            if net.pool4:
                await self.iptables.add_masquerade(4, net.pool4)
            if net.pool6:
                await self.iptables.add_masquerade(6, net.pool6)

    async def delete_network(self: EndpointManager, network_id: str) -> None:
        async with self._lock:
            net = self.networks.pop(network_id, None)
            if net is None:
                return
            busy = [ep.id for ep in self.endpoints.values() if ep.docker_network_id == network_id]
            if busy:
                log.warning("network.delete.endpoints_left", network=network_id[:12], endpoints=busy)
            await self.store.delete(NET_PREFIX + network_id)
        await self._unplumb_network(net)
        log.info("network.delete", network=network_id[:12])

    async def _unplumb_network(self: EndpointManager, net: Network) -> None:
        """Undo _plumb_network for a network no longer registered."""
        # The router addresses are never a network's to remove, whatever an
        # older record says; a gateway another network uses stays too.
        still_used = {g for n in self.networks.values() for g in n.host_gateways}
        still_used |= {str(self.node.router4), str(self.node.router6)}
        for gw in net.host_gateways:
            if gw not in still_used:
                await self.links.del_host_address(gw)
        if self.iptables is not None and not net.cilium_ipam:
            others = {(n.pool4, n.pool6) for n in self.networks.values()}
            if net.pool4 and all(p4 != net.pool4 for p4, _ in others):
                await self.iptables.remove_masquerade(4, net.pool4)
            if net.pool6 and all(p6 != net.pool6 for _, p6 in others):
                await self.iptables.remove_masquerade(6, net.pool6)

    def network(self: EndpointManager, network_id: str) -> Network:
        net = self.networks.get(network_id)
        if net is None:
            raise NotFound(f"network {network_id} not found (was it created while the agent was running?)")
        return net

    async def _save_network(self: EndpointManager, net: Network) -> None:
        await self.store.put(NET_PREFIX + net.id, json.dumps(net.to_record()).encode())
