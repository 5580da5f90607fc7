"""Endpoint lifecycle: create, join, label updates, delete and restore.

The manager is the agent's own operation set; the Docker plugin and the REST
API only translate into these calls. Every change is persisted in the node
store before it is acknowledged, so a restarted agent (even after kill -9)
restores exactly the endpoints Docker believes exist.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Protocol

import structlog

from docker_cilium import faults
from docker_cilium.datapath.iptables import Iptables
from docker_cilium.datapath.link import LinkManager, container_mac, host_ifname, peer_ifname
from docker_cilium.endpoint.model import Endpoint, State
from docker_cilium.endpoint.networks import NetworksMixin
from docker_cilium.endpoint.restore import RestoreMixin
from docker_cilium.endpoint.network import Network, bare_ip, check_endpoint_address
from docker_cilium.endpoint.reference import parse_reference
from docker_cilium.errors import BadRequest, Conflict, InsufficientStorage, NotFound
from docker_cilium.ipam.allocator import IPAM, endpoint_owner
from docker_cilium.identity.labels import Label
from docker_cilium.ipam.ranges import NodeAddressing
from docker_cilium.kvstore import keys
from docker_cilium.kvstore.backend import Backend
from docker_cilium.policy.resolve import parse_enforcement

log = structlog.get_logger(__name__)

EP_PREFIX = keys.ENDPOINTS
ENDPOINT_OPTIONS = ("PolicyEnforcement",)  # what `cilium endpoint config` may change
RTYPE_NEXTHOP = 0
RTYPE_CONNECTED = 1


class DatapathHooks(Protocol):
    """What the manager tells the policy/BPF layer (the Regenerator)."""

    async def endpoint_created(self, ep: Endpoint) -> None: ...
    async def endpoint_changed(self, ep: Endpoint) -> None: ...
    async def endpoint_deleted(self, ep: Endpoint) -> None: ...
    async def regenerate(self, ep: Endpoint) -> None: ...


class NoDatapath:
    async def endpoint_created(self, ep: Endpoint) -> None:
        ep.set_state(State.READY, "no policy datapath")

    async def endpoint_changed(self, ep: Endpoint) -> None:
        return None

    async def endpoint_deleted(self, ep: Endpoint) -> None:
        return None

    async def regenerate(self, ep: Endpoint) -> None:
        return None


class EndpointPorts(Protocol):
    """Published ports (``portmap.PortMapManager``): unpublished when an endpoint goes."""

    async def endpoint_deleted(self, ep: Endpoint) -> None: ...


@dataclass
class StaticRoute:
    destination: str
    route_type: int
    next_hop: str = ""


@dataclass
class JoinInfo:
    src_name: str
    gateway4: str = ""
    gateway6: str = ""
    routes: list[StaticRoute] = field(default_factory=list)


async def _all(*steps: Awaitable[Any]) -> list[Any]:
    """Run ``steps`` together and return their results; once every one has
    ended, raise the first failure (``gather`` would return while the others
    still change the kernel, racing the caller's rollback)."""
    results = await asyncio.gather(*steps, return_exceptions=True)
    for res in results:
        if isinstance(res, BaseException):
            raise res
    return results


class EndpointManager(NetworksMixin, RestoreMixin):
    """Endpoints (and, in NetworksMixin, the networks they join) of this node."""

    def __init__(
        self,
        store: Backend,
        links: LinkManager,
        iptables: Iptables | None,
        node: NodeAddressing,
        ipam: IPAM,
        default_mtu: int,
        hooks: DatapathHooks | None = None,
        ports: EndpointPorts | None = None,
    ) -> None:
        self.store = store
        self.links = links
        self.iptables = iptables
        self.node = node
        self.ipam = ipam
        self.default_mtu = default_mtu
        self.hooks: DatapathHooks = hooks or NoDatapath()
        self.ports = ports
        self.networks: dict[str, Network] = {}
        self.endpoints: dict[str, Endpoint] = {}  # by Docker endpoint ID
        self._lock = asyncio.Lock()
        self._creating: dict[str, int] = {}  # Docker endpoint ID -> reserved endpoint ID
        self._creating_addrs: dict[str, str] = {}  # address -> Docker endpoint ID being created
        self._unfinished: list[Endpoint] = []  # records of creates/deletes a crash interrupted
        self.restore_failures: list[str] = []  # "<key>: <error>" of records restore skipped

    # ---- persistence -------------------------------------------------------------

    async def _save_endpoint(self, ep: Endpoint) -> None:
        await self.store.put(EP_PREFIX + ep.docker_endpoint_id, json.dumps(ep.to_record()).encode())

    # ---- endpoints ---------------------------------------------------------------

    def _pick_id(self, ipv4: str | None, ipv6: str | None) -> int:
        used = {ep.id for ep in self.endpoints.values()} | set(self._creating.values())
        for addr in (ipv6, ipv4):
            if addr:
                cand = int(ipaddress.ip_address(addr)) & 0xFFFF
                if cand and cand not in used:
                    return cand
        for cand in range(1, 0x10000):
            if cand not in used:
                return cand
        raise InsufficientStorage("no free endpoint ID on this node")

    async def create_endpoint(self, network_id: str, endpoint_id: str, address: str, address6: str,
                              mac: str) -> tuple[Endpoint, bool]:
        """Create the veth and routes; returns the endpoint and whether we chose its MAC."""
        t0 = time.perf_counter()
        net = self.network(network_id)
        if endpoint_id in self.endpoints:
            raise Conflict(f"endpoint {endpoint_id} already exists")
        for family, addr in ((4, address), (6, address6)):
            if addr:
                check_endpoint_address(net, family, addr, self.node)
        ipv4 = bare_ip(address) if address else None
        ipv6 = bare_ip(address6) if address6 else None
        if ipv4 is None and ipv6 is None:
            raise BadRequest("Interface has neither Address nor AddressIPv6: "
                                "create the network with --ipam-driver cilium or a subnet")
        chosen_mac = not mac
        mac = mac or container_mac(endpoint_id)
        # The lock covers only the ID choice: endpoints are created in
        # parallel, and none waits for another's netlink or BPF work.
        async with self._lock:
            if endpoint_id in self.endpoints or endpoint_id in self._creating:
                raise Conflict(f"endpoint {endpoint_id} already exists")
            for addr in (ipv4, ipv6):
                if addr:
                    self._check_address_free(addr)
            eid = self._pick_id(ipv4, ipv6)
            self._creating[endpoint_id] = eid
            self._creating_addrs.update({a: endpoint_id for a in (ipv4, ipv6) if a})
        try:
            ep = Endpoint(
                id=eid, docker_endpoint_id=endpoint_id, docker_network_id=network_id,
                ifname=host_ifname(endpoint_id), ifindex=0, peer_ifname=peer_ifname(endpoint_id),
                mac=mac, host_mac="", ipv4=ipv4, ipv6=ipv6, mtu=net.mtu,
            )
            try:
                # Recorded as `creating` while its veth is made, and on disk
                # before routes or maps exist: a crash from then on leaves a
                # record restore undoes (see restore); one before leaves at
                # most the veth, which no record owns and the start-up orphan
                # sweep removes (orphans.collect_orphans).
                _, link = await _all(self._save_endpoint(ep),
                                     self.links.create_endpoint_link(endpoint_id, net.mtu, mac))
                ep.ifindex, ep.host_mac = link.host_ifindex, link.host_mac
                ep.set_state(State.WAITING_FOR_IDENTITY, "created; container labels not known yet")
                # Routes (netlink thread) and maps + programs (datapath) side
                # by side: nothing flows before dockerd has the reply.
                await _all(self._plumb_endpoint(ep), self.hooks.endpoint_created(ep))
                faults.point("endpoint-create-before-save")
                # One commit (the store groups concurrent writes) for the
                # record and its addresses' owner.
                await _all(self._save_endpoint(ep), *(self.ipam.set_owner(a, endpoint_owner(eid))
                                                      for a in (ipv4, ipv6) if a and net.cilium_ipam))
            except BaseException:
                log.warning("endpoint.create.rollback", endpoint=eid, endpoint_id=endpoint_id[:12])
                await self._teardown(ep)
                raise
            self.endpoints[endpoint_id] = ep
        finally:
            self._creating.pop(endpoint_id, None)
            for addr in (ipv4, ipv6):
                if addr and self._creating_addrs.get(addr) == endpoint_id:
                    del self._creating_addrs[addr]
        ms = (time.perf_counter() - t0) * 1000
        log.info("endpoint.create", endpoint=eid, ifname=ep.ifname, ipv4=ipv4, ipv6=ipv6, duration_ms=round(ms, 2))
        return ep, chosen_mac

    def _address_holder(self, addr: str) -> str | None:
        """Which endpoint (or create under way) has ``addr``, as the end of a
        sentence; None if none has."""
        for ep in self.endpoints.values():
            if addr in (ep.ipv4, ep.ipv6):
                return f"already held by endpoint {ep.id} (Docker endpoint {ep.docker_endpoint_id[:12]})"
        other = self._creating_addrs.get(addr)
        return f"being given to Docker endpoint {other[:12]} right now" if other is not None else None

    def holds_address(self, addr: str) -> bool:
        """Whether an endpoint (or one being created) has ``addr``."""
        return self._address_holder(addr) is not None

    def _check_address_free(self, addr: str) -> None:
        """Refuse an address the node or another endpoint holds (caller holds the lock).

        A second endpoint on one address would replace the first one's host
        route and endpoint-map entry, taking its traffic; the router and the
        pool gateways live on cilium_host and belong to no endpoint.
        """
        if addr in (str(self.node.router4), str(self.node.router6)):
            raise Conflict(f"address {addr} is this node's router address and cannot be given to an endpoint")
        for net in self.networks.values():
            if addr in net.host_gateways:
                raise Conflict(f"address {addr} is the gateway of network {net.id[:12]} and cannot be given "
                               "to an endpoint")
        holder = self._address_holder(addr)
        if holder is not None:
            raise Conflict(f"address {addr} is {holder}")

    async def _plumb_endpoint(self, ep: Endpoint) -> None:
        net = self.networks.get(ep.docker_network_id)
        proxy = []
        if ep.ipv6:
            proxy.append(str(self.node.router6))
            if net and net.gateway6 and net.gateway6 != str(self.node.router6):
                proxy.append(net.gateway6)
        await self.links.add_endpoint_routes(ep.ifindex, ep.ipv4, ep.ipv6, str(self.node.router4),
                                             str(self.node.router6) if ep.ipv6 else None, proxy)

    def join_info(self, ep: Endpoint) -> JoinInfo:
        """Routes that work alone AND beside another network.

        An IPv4 Gateway plus connected /32 to it lets dockerd pick one default
        gateway across networks (a 0.0.0.0/0 static route, Cilium's way, fails
        when the container is also on Docker's bridge); node-range routes via
        the router keep other cilium endpoints reachable when another network
        owns the default.
        """
        net = self.network(ep.docker_network_id)
        info = JoinInfo(src_name=ep.peer_ifname)
        if ep.ipv4:
            gw4 = net.gateway4 or str(self.node.router4)
            info.gateway4 = gw4
            info.routes.append(StaticRoute(f"{gw4}/32", RTYPE_CONNECTED))
            if net.cilium_ipam:
                info.routes.append(StaticRoute(str(self.node.ipv4_range), RTYPE_NEXTHOP, gw4))
        if ep.ipv6:
            gw6 = net.gateway6 or str(self.node.router6)
            info.gateway6 = gw6
            info.routes.append(StaticRoute(f"{gw6}/128", RTYPE_CONNECTED))
            if net.cilium_ipam:
                info.routes.append(StaticRoute(str(self.node.ipv6_range), RTYPE_NEXTHOP, gw6))
        return info

    async def join(self, network_id: str, endpoint_id: str, sandbox_key: str) -> JoinInfo:
        t0 = time.perf_counter()
        ep = self.by_docker_id(endpoint_id, network_id)
        info = self.join_info(ep)  # first: a Join it refuses (network gone) leaves the endpoint as it was
        old, ep.sandbox_key = ep.sandbox_key, sandbox_key
        try:
            await self._save_endpoint(ep)
        except BaseException:
            ep.sandbox_key = old  # not on disk: not in memory either
            raise
        log.debug("endpoint.join", endpoint=ep.id, duration_ms=round((time.perf_counter() - t0) * 1000, 2))
        return info

    async def leave(self, network_id: str, endpoint_id: str) -> None:
        ep = self.endpoints.get(endpoint_id)
        if ep is None:
            return
        ep.sandbox_key = ""
        await self._save_endpoint(ep)

    async def delete_endpoint(self, network_id: str, endpoint_id: str, reason: str = "deleted by Docker") -> bool:
        """Idempotent: dockerd re-deletes endpoints after crashes; unknown is fine.

        The endpoint stays known (``disconnecting``, in memory and in the
        store) until every cleanup step succeeded: a step that fails leaves it
        for the retry (or for restore, after a crash) to finish, instead of
        forgetting what still has to be removed.
        """
        if endpoint_id in self._creating:
            # Its link and maps are being set up right now: removing them
            # underneath would leave the create to finish a broken endpoint.
            raise Conflict(f"endpoint {endpoint_id} is being created right now: delete it once CreateEndpoint "
                           "has returned")
        ep = self.endpoints.get(endpoint_id)
        if ep is None:
            await self.links.delete_endpoint_link(endpoint_id)
            return False
        if ep.state != State.DISCONNECTING:
            ep.set_state(State.DISCONNECTING, reason)
            await self._save_endpoint(ep)
        await self._teardown(ep, retire=True)
        async with self._lock:
            if self.endpoints.get(endpoint_id) is ep:
                del self.endpoints[endpoint_id]
        ep.set_state(State.DISCONNECTED, "removed")
        log.info("endpoint.delete", endpoint=ep.id, ifname=ep.ifname, reason=reason)
        return True

    async def disconnect(self, ep: Endpoint) -> None:
        """`cilium endpoint disconnect`: the endpoint leaves the network as if
        Docker had deleted it (link, maps, routes, record, identity reference).
        The container keeps running without the interface; Docker's later
        DeleteEndpoint finds nothing left to do, and its address stays
        allocated to it until Docker releases it."""
        await self.delete_endpoint(ep.docker_network_id, ep.docker_endpoint_id, "disconnected by the operator (API)")

    async def regenerate(self, ep: Endpoint, reason: str) -> None:
        """`cilium endpoint regenerate`: its maps rewritten from the current
        policy and its programs attached again (repairs a detached program)."""
        if ep.state in (State.DISCONNECTING, State.DISCONNECTED):
            raise Conflict(f"endpoint {ep.id} is {ep.state.value}: nothing to regenerate")
        if ep.state == State.READY:
            ep.set_state(State.WAITING_TO_REGENERATE, reason)
        else:
            ep.log_status(reason)
        await self.hooks.regenerate(ep)

    async def _teardown(self, ep: Endpoint, retire: bool = False) -> None:
        """Remove everything of ``ep`` from the kernel, then its record; each
        step is idempotent, so a retry after a failure redoes all of them.
        ``retire``: the veth is taken down now and deleted in the background
        (DeleteEndpoint is on `docker run --rm`'s path; the kernel's delete
        is most of its time)."""
        if self.ports is not None:
            await self.ports.endpoint_deleted(ep)  # no DNAT to an address about to go
        # The link goes (or goes down) first: while it passes traffic its
        # programs need its map entries, or they would let it through unchecked.
        if retire:
            await self.links.retire_endpoint_link(ep.docker_endpoint_id)
        else:
            await self.links.delete_endpoint_link(ep.docker_endpoint_id)
        await self.hooks.endpoint_deleted(ep)
        await self.links.delete_routes(ep.ipv4, ep.ipv6)
        await self.store.delete(EP_PREFIX + ep.docker_endpoint_id)

    def by_docker_id(self, endpoint_id: str, network_id: str | None = None) -> Endpoint:
        ep = self.endpoints.get(endpoint_id)
        if ep is None or (network_id and ep.docker_network_id != network_id):
            raise NotFound(f"endpoint {endpoint_id} not found")
        return ep

    def lookup(self, ref: str) -> Endpoint:
        """Resolve Cilium's endpoint references: ``N``, ``cilium-local:N``,
        ``container-id:ID``, ``container-name:NAME``, ``docker-endpoint:ID``."""
        wanted = parse_reference(ref)  # BadRequest if malformed
        for ep in self.endpoints.values():
            if wanted.matches(ep):
                return ep
        raise NotFound(f"endpoint {ref} not found")

    def list(self) -> list[Endpoint]:
        return sorted(self.endpoints.values(), key=lambda e: e.id)

    async def update_container(self, endpoint_id: str, container_id: str, name: str, labels: list[str]) -> None:
        """Container metadata learnt from Docker events, asynchronously."""
        ep = self.endpoints.get(endpoint_id)
        if ep is None:
            return
        changed = sorted(labels) != sorted(ep.labels) or ep.container_id != container_id or ep.container_name != name
        if not changed and ep.state != State.WAITING_FOR_IDENTITY:
            return
        before = (ep.container_id, ep.container_name, ep.labels)
        ep.container_id, ep.container_name, ep.labels = container_id, name, sorted(labels)
        try:
            await self.hooks.endpoint_changed(ep)
        except BaseException:
            ep.container_id, ep.container_name, ep.labels = before  # the next event retries
            raise
        if self.endpoints.get(endpoint_id) is not ep:
            return  # deleted meanwhile: don't write its record back
        await self._save_endpoint(ep)
        log.info("endpoint.labels", endpoint=ep.id, container=container_id[:12], labels=ep.labels)

    async def update_labels(self, ep: Endpoint, add: list[str], delete: list[str]) -> None:
        """``cilium endpoint labels``: user labels added, container labels disabled."""
        for raw in list(add) + list(delete):
            try:
                label = Label.parse(raw)
            except ValueError as exc:
                raise BadRequest(f"invalid label {raw!r}: {exc}") from None
            if raw in add and label.source in ("reserved", "cidr"):
                raise BadRequest(f"label {raw!r}: source {label.source!r} is reserved for the agent")
        add_s = {str(Label.parse(l)) for l in add}
        del_s = {str(Label.parse(l)) for l in delete}
        before = (ep.user_labels, ep.disabled_labels)
        ep.user_labels = sorted((set(ep.user_labels) | add_s) - del_s)
        ep.disabled_labels = sorted((set(ep.disabled_labels) | (del_s & set(ep.labels))) - add_s)
        try:
            await self.hooks.endpoint_changed(ep)
        except BaseException:
            ep.user_labels, ep.disabled_labels = before
            raise
        await self._save_endpoint(ep)

    async def update_options(self, ep: Endpoint, changes: dict[str, str]) -> None:
        """``cilium endpoint config``: per-endpoint options (``ENDPOINT_OPTIONS``)."""
        for key in changes:
            if key not in ENDPOINT_OPTIONS:
                raise BadRequest(f"unknown endpoint option {key!r} (known: {', '.join(ENDPOINT_OPTIONS)})")
        ep.policy_enforcement = parse_enforcement(changes.get("PolicyEnforcement", ep.policy_enforcement))
        changed = ", ".join(f"{k}={v}" for k, v in sorted(changes.items()))
        await self.regenerate(ep, f"configuration changed: {changed}" if changes else "regeneration requested (API)")
        await self._save_endpoint(ep)

