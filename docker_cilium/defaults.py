"""Paths and names users of Cilium expect; one place so CLI, agent and tests agree."""

PLUGIN_SOCKET = "/run/docker/plugins/cilium.sock"
API_SOCKET = "/var/run/cilium/cilium.sock"
LIB_DIR = "/var/lib/cilium"
STATE_DIR = "/var/run/cilium/state"
DOCKER_SOCKET = "/var/run/docker.sock"
BPFFS_ROOT = "/sys/fs/bpf"

HOST_DEVICE = "cilium_host"
HOST_PEER_DEVICE = "cilium_net"
ENDPOINT_IFNAME_PREFIX = "lxc"
CONTAINER_IFNAME_PREFIX = "cilium"

DEFAULT_MTU = 1500
