"""The agent: wires stores, IPAM, endpoints, datapath and listeners, in order.

Start order matters: state is restored (IPAM, networks, endpoints) BEFORE the
plugin socket opens, so dockerd can never see a half-restored agent hand out
an address that a running container already holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from typing import Any

import structlog

from docker_cilium import __version__, defaults
from docker_cilium.agent.config import DaemonConfig
from docker_cilium.agent.controllers import Controllers
from docker_cilium.agent.lock import AgentLock
from docker_cilium.agent.monitor_options import monitor_options
from docker_cilium.agent.options import RuntimeOptions, agent_options
from docker_cilium.agent.sdnotify import notify as sd_notify
from docker_cilium.agent.servers import UnixServer, ensure_socket_free
from docker_cilium.api.app import build_app as build_api
from docker_cilium.datapath import proxyroute, socketlb, tunnel
from docker_cilium.datapath.hostport import HostPortRules
from docker_cilium.datapath.iptables import Iptables
from docker_cilium.datapath.link import LinkManager
from docker_cilium.datapath.loader import Datapath, compile_datapath
from docker_cilium.datapath.nodehandler import LocalNode, NetlinkRoutes, NodeHandler
from docker_cilium.datapath.maps.registry import DatapathMaps
from docker_cilium.endpoint.manager import EndpointManager
from docker_cilium.endpoint.orphans import collect_orphans
from docker_cilium.endpoint.reconcile import DockerReconciler
from docker_cilium.endpoint.regenerator import Regenerator
from docker_cilium.identity.allocator import IdentityAllocator
from docker_cilium.identity.cache import IdentityCache
from docker_cilium.ipam.allocator import IPAM
from docker_cilium.ipam.ranges import NodeAddressing, node_element
from docker_cilium.ipcache import IPCache
from docker_cilium.kvstore import keys, new_backend
from docker_cilium.kvstore.backend import Backend
from docker_cilium.kvstore.files import private_directory
from docker_cilium.kvstore.sqlite import SQLiteBackend
from docker_cilium.monitor.hub import MonitorHub
from docker_cilium.node.cluster import ClusterNode
from docker_cilium.monitor.policy_events import PolicyEvents
from docker_cilium.monitor.format import node_monitor
from docker_cilium.monitor.reader import DatapathMonitor, LabelCache
from docker_cilium.metrics import AgentMetrics
from docker_cilium.metrics.kvstore import MeteredBackend
from docker_cilium.metrics.server import MetricsServer
from docker_cilium.plugin.app import build_app as build_plugin
from docker_cilium.plugin.ipam import IpamDriver
from docker_cilium.plugin.network import NetworkDriver
from docker_cilium.policy.manager import PolicyManager
from docker_cilium.portmap.manager import PortMapManager
from docker_cilium.prefilter import PreFilter
from docker_cilium.prefilter.device import start_prefilter
from docker_cilium.proxy.accesslog import AccessLog
from docker_cilium.proxy.manager import ProxyManager
from docker_cilium.proxy.peers import AgentPeers
from docker_cilium.service.cluster import ClusterServices
from docker_cilium.service.manager import ServiceManager
from docker_cilium.version import version_info
from docker_cilium.workloads.docker import DockerWatcher

log = structlog.get_logger(__name__)

#: How long `cilium status` waits for the KV store's health read.
STATUS_KVSTORE_TIMEOUT_S = 2.0


class Daemon:
    def __init__(self, config: DaemonConfig) -> None:
        self.config = config
        self.started = 0.0
        self.store: Backend | None = None  # node-local state (always embedded)
        self.kvstore: Backend | None = None  # cluster state (embedded or etcd)
        self.links = LinkManager()
        self.iptables = Iptables(ipv6=config.enable_ipv6, masquerade=config.masquerade)
        self.node: NodeAddressing | None = None
        self.cluster: ClusterNode | None = None  # with a cluster store (etcd): registry, ipcache, claims
        self.mtu = 0
        self._ipam: IPAM | None = None
        self._endpoints: EndpointManager | None = None
        self.portmap: PortMapManager | None = None
        self._policy: PolicyManager | None = None
        self._identities: IdentityCache | None = None
        self._regenerator: Regenerator | None = None
        self._services: ServiceManager | None = None
        self.allocator: IdentityAllocator | None = None
        self.datapath: Datapath | None = None
        self.monitor = MonitorHub()  # `cilium monitor`: datapath and agent events
        self.datapath_monitor: DatapathMonitor | None = None
        self.controllers = Controllers()
        self._options: RuntimeOptions | None = None
        self.watcher: DockerWatcher | None = None
        self.servers: list[UnixServer] = []
        self.lock = AgentLock([config.lib_dir, config.state_dir])
        self.reconciler: DockerReconciler | None = None
        self._reconcile: asyncio.Task[None] | None = None
        self.metrics = AgentMetrics()
        self.metrics_server: MetricsServer | None = None
        self.prefilter: PreFilter | None = None  # `--prefilter-device`: the XDP deny list
        self.proxy: ProxyManager | None = None  # `--enable-l7-proxy`: the L7 proxy's redirects

    @property
    def ipam(self) -> IPAM:
        assert self._ipam is not None
        return self._ipam

    @property
    def policy(self) -> PolicyManager:
        assert self._policy is not None
        return self._policy

    @property
    def identities(self) -> IdentityCache:
        assert self._identities is not None
        return self._identities

    @property
    def regenerator(self) -> Regenerator:
        assert self._regenerator is not None
        return self._regenerator

    @property
    def endpoints(self) -> EndpointManager:
        assert self._endpoints is not None
        return self._endpoints

    @property
    def services(self) -> ServiceManager:
        assert self._services is not None
        return self._services

    @property
    def options(self) -> RuntimeOptions:
        assert self._options is not None
        return self._options

    async def start(self) -> None:
        t0 = time.perf_counter()
        cfg = self.config
        for d in (cfg.lib_dir, cfg.state_dir):
            private_directory(d)
        # Before any socket, link or map is touched: a second agent stops here.
        self.lock.acquire()
        for path in (cfg.socket_path, cfg.plugin_socket):
            ensure_socket_free(path)
        if cfg.prometheus_serve_addr:
            # Bound before any link, map or socket is touched: a taken port stops the
            # start here. Until the API is built a scrape has no state series.
            self.metrics_server = MetricsServer(self.metrics, cfg.prometheus_serve_addr)
            await self.metrics_server.start()
        self.store = SQLiteBackend(os.path.join(cfg.lib_dir, "node-state.db"))
        await self.store.connect()
        self.kvstore = MeteredBackend(new_backend(cfg.kvstore, cfg.kvstore_opts, cfg.lib_dir), self.metrics)
        await self.kvstore.connect()

        node_ip = await self.links.first_global_ipv4()
        if not node_ip and not cfg.ipv4_range:
            raise RuntimeError("no global IPv4 address on this host: pass --ipv4-range")
        if cfg.kvstore != "local":
            self.cluster = ClusterNode(self.kvstore, cfg.node_name, cfg.enable_ipv6)
            self.node = await self.cluster.claim(node_ip or "0.0.0.0", cfg.ipv4_range, cfg.ipv6_range)
        else:
            self.node = NodeAddressing.derive(node_ip or "0.0.0.0", cfg.ipv4_range, cfg.ipv6_range)
        self.mtu = tunnel.tunnel_mtu(cfg.mtu or await self.links.uplink_mtu(), cfg.tunnel)
        host_ifindex = await self.links.ensure_host_device(str(self.node.router4),
                                                           str(self.node.router6) if cfg.enable_ipv6 else None,
                                                           self.mtu)
        masq = {4: [str(self.node.ipv4_range)], 6: [str(self.node.ipv6_range)] if cfg.enable_ipv6 else []}
        await self.iptables.ensure(masq)

        # The datapath is compiled once per configuration (cached by hash) and
        # loaded once; pinned maps from a previous run are reused as they are.
        obj_dir = defaults.bpf_object_dir(cfg.state_dir)
        obj, sock_obj = await asyncio.gather(
            asyncio.to_thread(compile_datapath, out_dir=obj_dir),
            asyncio.to_thread(compile_datapath, out_dir=obj_dir, source=socketlb.SOURCE) if cfg.bpf_lb_sock
            else asyncio.sleep(0))
        self.datapath = await asyncio.to_thread(
            Datapath.load, obj, defaults.bpf_pin_root(cfg.bpf_root), defaults.bpf_prog_dir(cfg.bpf_root))
        assert self.datapath.maps is not None
        # L7 proxy steering: from-host on cilium_host, local delivery of marked packets
        await asyncio.to_thread(self.datapath.attach_host, host_ifindex)
        await asyncio.to_thread(proxyroute.ensure, cfg.enable_ipv6)
        await self._tunnel()
        await self._socket_lb(sock_obj)
        config_map = self.datapath.maps.config
        self.metrics.set_datapath_reader(self.datapath.maps.metrics.dump)

        self.datapath_monitor = DatapathMonitor(self._events_fd, self.monitor,
                                                LabelCache(lambda: self.identities.identity_labels()))
        self.allocator = IdentityAllocator(self.kvstore, cfg.node_name, monitor=self.monitor)
        await self.allocator.start()

        self._ipam = IPAM(self.store, self.node, enable_ipv6=cfg.enable_ipv6)
        held = await self._ipam.restore()
        assert self.datapath.maps is not None
        ipcache = IPCache(self.store, self.datapath.maps.ipcache)
        await ipcache.start(await self.links.host_addresses())
        if self.cluster is not None:  # before the endpoints' restore: they are published as restored
            await self.cluster.start(self.node, ipcache)
            await self.cluster.start_datapath(self._node_handler(ipcache))
        self._identities = IdentityCache(self.allocator, ipcache)
        self._policy = PolicyManager(self.store, ipcache, self._identities, cfg.policy_enforcement)
        await self._policy.start()
        self._options = RuntimeOptions(self.store)
        for option in [*agent_options(self._policy, cfg, config_map), *monitor_options(config_map, cfg)]:
            self._options.register(option)
        await self._options.restore()
        if cfg.enable_l7_proxy:
            peers = AgentPeers(lambda: self.endpoints.endpoints.values(), ipcache.host_addresses,
                               ipcache.cidr_identities, LabelCache(lambda: self.identities.identity_labels()),
                               ipcache.remote_identity)
            self.proxy = ProxyManager(peers, AccessLog(self.monitor, self.metrics), ipv6=cfg.enable_ipv6)
        self._regenerator = Regenerator(self._policy, self.allocator, self._identities, ipcache, self.datapath,
                                        observer=self.metrics, monitor=self.monitor, proxy=self.proxy)
        PolicyEvents(self._policy, self.monitor)  # after the Regenerator: next to the commit
        self.portmap = PortMapManager(self.store, HostPortRules(self.iptables))
        self._endpoints = EndpointManager(self.store, self.links, self.iptables, self.node, self._ipam, self.mtu,
                                          self._regenerator, self.portmap)
        await self._endpoints.restore()
        await self._endpoints.restore_datapath()
        await self.portmap.restore(self._endpoints.endpoints)  # host ports held again, chains rebuilt
        self._endpoints.restore_failures += self.portmap.restore_failures
        await collect_orphans(self.links, self.datapath.maps, self._endpoints.endpoints.values(), self.node)
        self.prefilter = await start_prefilter(self.store, self.datapath.maps.prefilter, cfg.prefilter_device,
                                               cfg.prefilter_mode, cfg.bpf_root, cfg.state_dir)
        # Services into the LB maps before any socket opens (containers started
        # meanwhile reach their VIPs).
        self._services = ServiceManager(self.store, self.datapath.maps.lb,
                                        ClusterServices(self.kvstore) if self.cluster is not None else None)
        await self._services.restore()
        self.reconciler = DockerReconciler(self._endpoints, self._ipam, cfg.docker_reconcile_grace)
        self._start_controllers()

        self.servers = [
            UnixServer(build_api(self, self.metrics), cfg.socket_path, 0o660, "api"),
            UnixServer(build_plugin(NetworkDriver(self._endpoints, self.portmap), IpamDriver(self._ipam)),
                       cfg.plugin_socket, 0o600, "docker-plugin"),
        ]
        for server in self.servers:
            await server.start()
        self.watcher = DockerWatcher(cfg.docker_socket, lambda nid: nid in self.endpoints.networks,
                                     self._endpoints.update_container, self.iptables.ensure_nat_first)
        self.watcher.start()
        self._reconcile = asyncio.create_task(self.reconciler.run(self.watcher.view), name="docker-reconcile")
        self.started = time.time()
        sd_notify("READY=1")  # systemd may start dockerd now (contrib/systemd/cilium.service)
        log.info("agent.started", version=__version__, node=self.node.to_dict(), mtu=self.mtu,
                 tunnel=cfg.tunnel, kvstore=cfg.kvstore, addresses_held=len(self._ipam.allocations()) if held else 0,
                 endpoints=len(self._endpoints.endpoints), duration_ms=round((time.perf_counter() - t0) * 1000))

    def _node_handler(self, ipcache: IPCache) -> NodeHandler:
        """Routes (and, with the tunnel, tunnel map entries) to the other nodes' ranges."""
        assert self.node is not None and self.datapath is not None and self.datapath.maps is not None
        cfg = self.config
        mine = (self.node.ipv4_range, self.node.ipv6_range if cfg.enable_ipv6 else None, self.node.node_ip)
        local = LocalNode(cfg.node_name, str(self.node.router4), str(self.node.router6) if cfg.enable_ipv6 else None,
                          self.mtu, tuple(str(p) for p in mine if p))
        return NodeHandler(local, cfg.tunnel, NetlinkRoutes(), self.datapath.maps.tunnel, ipcache)

    async def _socket_lb(self, sock_obj: "os.PathLike[str] | None") -> None:
        """Attach the socket LB (its maps beside the datapath's, links pinned) or,
        with --bpf-lb-sock=false, detach what an earlier run attached."""
        cfg = self.config
        links = defaults.socketlb_links_dir(cfg.bpf_root)
        if cfg.bpf_lb_sock:
            await asyncio.to_thread(socketlb.enable, sock_obj, defaults.bpf_pin_root(cfg.bpf_root), links,
                                    cfg.cgroup_root)
        elif removed := await asyncio.to_thread(socketlb.detach, links):
            log.info("socketlb.detached", links=len(removed))

    async def _tunnel(self) -> None:
        """cilium_vxlan with from-overlay and its ifindex in cilium_config, or,
        with --tunnel disabled, none (an earlier run's device removed)."""
        assert self.datapath is not None and self.datapath.maps is not None
        if self.config.tunnel == defaults.TUNNEL_VXLAN:
            ifindex = await asyncio.to_thread(tunnel.ensure_device, self.mtu)
            node_ip = self.node.node_ip if self.node is not None and self.node.node_ip != "0.0.0.0" else None
            await asyncio.to_thread(self.datapath.attach_overlay, ifindex, defaults.VXLAN_PORT, node_ip)
            return
        self.datapath.maps.config.set_tunnel_ifindex(0)
        if await asyncio.to_thread(tunnel.remove_device):
            log.info("tunnel.device_removed", device=defaults.VXLAN_DEVICE)

    def _start_controllers(self) -> None:
        """The agent's periodic loops, as controllers `cilium status` reports."""
        self.controllers.start("ct-gc", 30.0, self._ct_gc)
        self.controllers.start("identity-gc", 30.0, self._identity_gc)
        self.controllers.start("kvstore-health", 15.0, self._kvstore_health, first_run=0.0)

    async def _ct_gc(self) -> None:
        """Expire conntrack entries (the kernel never does)."""
        if self.datapath is not None and self.datapath.maps is not None:
            removed = await asyncio.to_thread(self.datapath.maps.ct.gc)
            if removed:
                log.debug("ct.gc", removed=removed)
            if self._services is not None and self._services.draining():
                # removed backends leave the map once no connection uses them
                self._services.collect_backends(await asyncio.to_thread(self.datapath.maps.ct.service_backends))

    async def _identity_gc(self) -> None:
        """Free identities no node references any more."""
        assert self.allocator is not None
        freed = await self.allocator.gc()
        if freed:
            log.info("identity.gc", freed=freed)

    async def _kvstore_health(self) -> None:
        """A read of the health key: a failure history for `cilium status`."""
        assert self.kvstore is not None
        await self.kvstore.get(keys.HEALTH)

    async def stop(self) -> None:
        await self.controllers.stop()
        for task in (self._reconcile,):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self.watcher:
            await self.watcher.stop()
        self.monitor.close()  # monitor streams end now, not at the server's shutdown timeout
        if self.metrics_server is not None:
            await self.metrics_server.stop()
        for server in reversed(self.servers):
            await server.stop()
        if self.proxy is not None:
            await self.proxy.close()  # redirected connections end; new ones are dropped until the next start
        if self._regenerator is not None:
            await self._regenerator.close()
        if self.allocator is not None:
            await self.allocator.close()
        if self._services is not None:
            await self._services.close()  # cluster services: the watch ends, the maps keep them
        if self.cluster is not None:
            await self.cluster.close()
        for store in (self.kvstore, self.store):
            if store is not None:
                await store.close()
        await self.links.close()
        if self.portmap is not None:
            self.portmap.close()  # its rules stay: published ports keep forwarding
        if self.datapath is not None:
            # Programs stay attached and maps pinned: enforcement goes on.
            await asyncio.to_thread(self.datapath.close)
        self.lock.release()
        log.info("agent.stopped")

    def _events_fd(self) -> int:
        assert self.datapath is not None and self.datapath.maps is not None
        return self.datapath.maps.events_fd

    def monitor_status(self) -> dict[str, Any]:
        """Cilium's MonitorStatus (the NodeMonitor line of `cilium status`)."""
        st = self.datapath_monitor.status() if self.datapath_monitor else self.monitor.status()
        return {**st, "state": "Ok", "msg": node_monitor(st)}  # state/msg: the NodeMonitor line

    def host_addressing(self) -> dict[str, Any]:
        assert self.node is not None
        return {
            "ipv4": {"enabled": True, "ip": str(self.node.router4), "alloc-range": str(self.node.ipv4_range)},
            "ipv6": {"enabled": self.config.enable_ipv6, "ip": str(self.node.router6),
                     "alloc-range": str(self.node.ipv6_range)},
            "node-ip": self.node.node_ip,
        }

    async def status(self) -> dict[str, Any]:
        """Cilium's StatusResponse shape (what `cilium status` prints)."""
        docker_ok = bool(self.watcher and self.watcher.connected)
        return {
            "kvstore": await self._kvstore_status(),
            "container-runtime": {"state": "Ok" if docker_ok else "Warning",
                                  "msg": "docker events connected" if docker_ok else
                                  (self.watcher.last_error if self.watcher else "") or "not connected"},
            "kubernetes": {"state": "Disabled"},
            "cilium": self._cilium_status(),
            "cilium-version": version_info(),
            "nodeMonitor": self.monitor_status(),
            "controllers": self.controllers.models(),
            "ipam": {**self.ipam.status(), "allocations": {
                ip: str(rec.get("owner", "")) for ip, rec in self.ipam.allocations().items()}},
            "endpoints": len(self.endpoints.endpoints),
            "identity-pending": self.regenerator.pending_report(),
            "policy": {"revision": self.policy.revision, "enforcement": self.policy.enforcement},
            "identity-allocation": self._identity_status(),
            "proxy": self.proxy.status(str(self.node.router4)) if self.proxy is not None and self.node else
            {"state": "Disabled"},
            **({"cluster-health": self.cluster.health()} if self.cluster is not None else {}),
        }

    async def _kvstore_status(self) -> dict[str, str]:
        """A read of the health key, bounded: a store that does not answer (etcd
        paused, a partition) is a Failure now, not after its RPC timeout."""
        name = f"{self.config.kvstore}" + (
            f" {self.config.kvstore_opts.get('etcd.address', '')}" if self.config.kvstore == "etcd" else "")
        try:
            assert self.kvstore is not None
            await asyncio.wait_for(self.kvstore.get(keys.HEALTH), STATUS_KVSTORE_TIMEOUT_S)
        except asyncio.TimeoutError:
            return {"state": "Failure", "msg": f"{name}: no answer within {STATUS_KVSTORE_TIMEOUT_S:g}s"}
        except Exception as exc:  # report, don't fail the health call
            return {"state": "Failure", "msg": str(exc)}
        return {"state": "Ok", "msg": name}

    def datapath_maps(self) -> DatapathMaps | None:
        return self.datapath.maps if self.datapath is not None else None

    def nodes(self) -> dict[str, Any]:
        """Cilium's ClusterNodeStatus: every node in the registry with a cluster store,
        else this node only. IPv4 is a node's own address, IPv6 its router address."""
        assert self.node is not None
        if self.cluster is not None:
            return self.cluster.nodes()
        return {"self": self.config.node_name, "nodes-added": [node_element(
            self.config.node_name, self.node, self.config.enable_ipv6)]}

    def _cilium_status(self) -> dict[str, str]:
        """Ok, or Warning naming the records restore had to skip."""
        msg = f"docker-cilium {__version__}, up {int(time.time() - self.started)}s"
        failures = self.endpoints.restore_failures
        if not failures:
            return {"state": "Ok", "msg": msg}
        return {"state": "Warning", "msg": f"{msg}; {len(failures)} record(s) not restored: " + "; ".join(failures)}

    def _identity_status(self) -> dict[str, Any]:
        """Allocator health: a number that came back owned by other labels is a Warning."""
        assert self.allocator is not None
        st = self.allocator.status()
        moved = ", ".join(f"{c['id']}->{c['new-id']} ({c['labels']})" for c in st["conflicts"])
        return {**st, "msg": f"{st['identities']} in use, {st['session-losses']} session losses"
                + (f"; identities moved after conflicts: {moved}" if moved else "")}
