"""Paths and names users of Cilium expect; one place so CLI, agent and tests agree."""

import os

PLUGIN_SOCKET = "/run/docker/plugins/cilium.sock"
API_SOCKET = "/var/run/cilium/cilium.sock"
LIB_DIR = "/var/lib/cilium"
STATE_DIR = "/var/run/cilium/state"
DOCKER_SOCKET = "/var/run/docker.sock"
BPFFS_ROOT = "/sys/fs/bpf"

# Under the bpffs root: maps pinned by name (Cilium's TCGlobalsPath) and the
# two pinned datapath programs. Under the state dir: the compiled objects.
TC_GLOBALS_PATH = "tc/globals"
PROGS_PATH = "cilium/progs"
BPF_OBJ_PATH = "bpf"
# Under the bpffs root: the socket LB's cgroup links (Cilium's path).
SOCKETLB_LINKS_PATH = "cilium/socketlb/links/cgroup"
# Where the agent mounts cgroup v2 for the socket LB unless it is there (Cilium's --cgroup-root).
CGROUP_ROOT = "/run/cilium/cgroupv2"


def bpf_pin_root(bpf_root: str = BPFFS_ROOT) -> str:
    """Where the datapath's maps are pinned: ``<bpf_root>/tc/globals``."""
    return os.path.join(bpf_root, TC_GLOBALS_PATH)


def bpf_prog_dir(bpf_root: str = BPFFS_ROOT) -> str:
    """Where the datapath's programs are pinned: ``<bpf_root>/cilium/progs``."""
    return os.path.join(bpf_root, PROGS_PATH)


def socketlb_links_dir(bpf_root: str = BPFFS_ROOT) -> str:
    """Where the socket LB's cgroup links are pinned: ``<bpf_root>/cilium/socketlb/links/cgroup``."""
    return os.path.join(bpf_root, SOCKETLB_LINKS_PATH)


def bpf_root_of(pin_root: str) -> str:
    """The bpffs root a map pin root hangs under (inverse of :func:`bpf_pin_root`)."""
    root = os.path.normpath(pin_root)
    for _ in TC_GLOBALS_PATH.split("/"):
        root = os.path.dirname(root)
    return root


def bpf_object_dir(state_dir: str = STATE_DIR) -> str:
    """Where compiled datapath objects are cached: ``<state_dir>/bpf``."""
    return os.path.join(state_dir, BPF_OBJ_PATH)


BPF_PIN_ROOT = bpf_pin_root()

# Datapath objects compiled when the agent image is built (it has no clang);
# named by the sha256 of their sources and defines (datapath.prebuild).
BPF_PREBUILT_DIR = "/usr/lib/docker-cilium/bpf"

HOST_DEVICE = "cilium_host"
HOST_PEER_DEVICE = "cilium_net"
#: the VXLAN device of tunnel mode (external/collect_metadata), Cilium's name and port
VXLAN_DEVICE = "cilium_vxlan"
VXLAN_PORT = 8472
#: what VXLAN over IPv4 adds to a packet (outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14)
VXLAN_OVERHEAD = 50
TUNNEL_VXLAN = "vxlan"
TUNNEL_DISABLED = "disabled"
TUNNEL_MODES = (TUNNEL_VXLAN, TUNNEL_DISABLED)
ENDPOINT_IFNAME_PREFIX = "lxc"
CONTAINER_IFNAME_PREFIX = "cilium"

DEFAULT_MTU = 1500

#: L7 proxy redirect ports (Cilium's range)
PROXY_PORT_MIN = 10000
PROXY_PORT_MAX = 20000
