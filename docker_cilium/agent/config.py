"""The agent's configuration: flags at start, a few options changeable at run time."""

from __future__ import annotations

import socket
from dataclasses import asdict, dataclass, field

from docker_cilium import defaults


def resolve_tunnel(tunnel: str | None, kvstore: str) -> str:
    """Cilium's --tunnel, defaulted by the store (several nodes need the tunnel)."""
    if not tunnel:
        return defaults.TUNNEL_VXLAN if kvstore != "local" else defaults.TUNNEL_DISABLED
    if tunnel not in defaults.TUNNEL_MODES:
        raise ValueError(f"invalid tunnel mode {tunnel!r}: expected one of {', '.join(defaults.TUNNEL_MODES)}")
    return tunnel


@dataclass
class DaemonConfig:
    kvstore: str = "local"
    kvstore_opts: dict[str, str] = field(default_factory=dict)
    ipv4_range: str | None = None
    ipv6_range: str | None = None
    enable_ipv6: bool = True
    lib_dir: str = defaults.LIB_DIR
    state_dir: str = defaults.STATE_DIR
    socket_path: str = defaults.API_SOCKET
    plugin_socket: str = defaults.PLUGIN_SOCKET
    docker_socket: str = defaults.DOCKER_SOCKET
    bpf_root: str = defaults.BPFFS_ROOT
    node_name: str = field(default_factory=socket.gethostname)
    masquerade: bool = True
    mtu: int = 0  # 0: follow the uplink
    debug: bool = False
    log_format: str = "auto"
    policy_enforcement: str = "default"
    monitor_aggregation: str = "medium"  # Cilium's level name; see datapath/maps/configmap.py
    docker_reconcile_grace: float = 60.0  # seconds; see endpoint/reconcile.py
    prometheus_serve_addr: str = ""  # HOST:PORT for /metrics; empty: not served
    prefilter_device: str = ""  # XDP prefilter device; empty: no prefilter
    prefilter_mode: str = "native"  # native (driver) or generic XDP
    bpf_lb_sock: bool = True  # host processes reach service VIPs (datapath/socketlb.py)
    cgroup_root: str = defaults.CGROUP_ROOT  # cgroup v2 mount the socket LB attaches to
    enable_l7_proxy: bool = True  # L7 (HTTP) policy through the proxy (docker_cilium/proxy)
    # "vxlan" or "disabled"; "" resolves by the store: vxlan with a cluster
    # store (etcd), disabled with the embedded one (one node: no MTU cost)
    tunnel: str = ""

    def __post_init__(self) -> None:
        self.tunnel = resolve_tunnel(self.tunnel, self.kvstore)

    def to_dict(self) -> dict:
        return asdict(self)
