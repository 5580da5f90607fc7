"""Every key and key prefix the agent writes, in Cilium's ``cilium/state/...`` layout.

One home, so two modules can never disagree on where a record lives (and a
restarted agent reads exactly what the previous one wrote).
"""

from __future__ import annotations

BASE = "cilium"
STATE = f"{BASE}/state"

#: Cluster-wide identities (kvstore): ``id/<ID>``, ``value/<labels>/<node>``, ``locks/<labels>``.
IDENTITIES = f"{STATE}/identities/v1/"
#: Node-local address allocations: ``<ip>`` -> owner.
IPAM = f"{STATE}/ipam/v1/"
#: Node-local Docker networks and endpoints: ``<docker id>`` -> record.
NETWORKS = f"{STATE}/networks/v1/"
ENDPOINTS = f"{STATE}/endpoints/v1/"
#: Node-local published ports (``docker run -p``): ``<docker endpoint id>`` -> mappings.
PORTMAP = f"{STATE}/portmap/v1/"
#: Node-local policy repository and enforcement mode (one JSON document).
POLICY_RULES = f"{STATE}/policy/v1/rules"
#: Node-local CIDR identities: prefix -> identity number.
CIDR_IDENTITIES = f"{STATE}/policy/v1/cidr-identities"
#: Node-local XDP prefilter deny list and its revision (one JSON document).
PREFILTER = f"{STATE}/prefilter/v1/spec"
#: Node-local services (`cilium service`): ``<service ID>`` -> frontend, backends and their IDs.
SERVICES = f"{STATE}/services/v1/"
#: Node-local runtime options changed with `cilium config` (one JSON document).
RUNTIME_OPTIONS = f"{STATE}/config/v1/options"
#: Cluster nodes (Cilium's node registry), on each agent's lease: ``<cluster>/<node name>`` -> Cilium's Node JSON.
NODES = f"{STATE}/nodes/v1/"
#: Node allocation range claims, persistent (not on a lease): ``<IPv4 range>`` -> owning node.
NODE_RANGES = f"{STATE}/noderanges/v1/"
#: The shared ipcache, on each agent's lease: ``<cluster>/<IP>`` -> Cilium's IPIdentityPair JSON.
IPCACHE = f"{STATE}/ip/v1/"
#: The cluster name under NODES and IPCACHE (Cilium's default cluster).
CLUSTER = "default"
#: Cluster-wide services (with a cluster store), persistent: ``id/<service ID>`` -> the service
#: (frontend, backends), ``frontend/<IP:port/protocol>`` -> the ID holding that frontend.
GLOBAL_SERVICES = f"{STATE}/services/v1/{CLUSTER}/"
#: Read by the health check to prove the kvstore answers.
HEALTH = f"{BASE}/.health"
