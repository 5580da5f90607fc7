"""A cluster node as the registry stores it: Cilium's ``pkg/node/types.Node`` JSON.

The same field names and encodings as Cilium's Go structs (``net.IP`` as a
string, ``*cidr.CIDR`` as ``{"IP", "Mask"}`` with the mask in base64), so a
record written here reads like one a Cilium agent would have written.
The tunnel (VXLAN) endpoint of a node is its first IPv4 ``InternalIP``, as
in Cilium; the health addresses are the node's router addresses on
``cilium_host``, which answer for the node inside its ranges.
"""

from __future__ import annotations

import base64
import ipaddress
import json
from dataclasses import dataclass, field
from typing import Any

from docker_cilium.ipam.ranges import NodeAddressing

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Cilium's address type for the address other nodes reach this one at.
INTERNAL_IP = "InternalIP"


class NodeDecodeError(ValueError):
    """A registry record that is not a Node (written by something else, or damaged)."""


def _cidr_json(net: IPNetwork | None) -> dict[str, str] | None:
    if net is None:
        return None
    return {"IP": str(net.network_address), "Mask": base64.b64encode(net.netmask.packed).decode()}


def _cidr_parse(raw: Any) -> IPNetwork | None:
    if raw is None:
        return None
    mask = base64.b64decode(raw["Mask"])
    plen = int.from_bytes(mask, "big").bit_count()
    return ipaddress.ip_network(f"{raw['IP']}/{plen}")


@dataclass(frozen=True)
class Node:
    """One node: its name, addresses and allocation ranges."""

    name: str
    cluster: str = "default"
    addresses: tuple[tuple[str, str], ...] = ()  # (type, IP)
    ipv4_alloc_cidr: ipaddress.IPv4Network | None = None
    ipv6_alloc_cidr: ipaddress.IPv6Network | None = None
    ipv4_health_ip: str = ""
    ipv6_health_ip: str = ""
    cluster_id: int = 0
    source: str = "local"
    encryption_key: int = 0
    extra: dict[str, Any] = field(default_factory=dict, compare=False)  # fields we do not model, kept

    @classmethod
    def local(cls, name: str, cluster: str, addressing: NodeAddressing, enable_ipv6: bool) -> "Node":
        """This agent's own record."""
        return cls(
            name=name, cluster=cluster, addresses=((INTERNAL_IP, addressing.node_ip),),
            ipv4_alloc_cidr=addressing.ipv4_range,
            ipv6_alloc_cidr=addressing.ipv6_range if enable_ipv6 else None,
            ipv4_health_ip=str(addressing.router4),
            ipv6_health_ip=str(addressing.router6) if enable_ipv6 else "",
        )

    @property
    def tunnel_endpoint(self) -> str | None:
        """The IPv4 address VXLAN packets for this node's ranges go to."""
        for typ, ip in self.addresses:
            if typ == INTERNAL_IP and ipaddress.ip_address(ip).version == 4:
                return ip
        return None

    def to_json(self) -> bytes:
        doc = {
            **self.extra,
            "Name": self.name,
            "Cluster": self.cluster,
            "IPAddresses": [{"Type": t, "IP": ip} for t, ip in self.addresses],
            "IPv4AllocCIDR": _cidr_json(self.ipv4_alloc_cidr),
            "IPv6AllocCIDR": _cidr_json(self.ipv6_alloc_cidr),
            "IPv4HealthIP": self.ipv4_health_ip,
            "IPv6HealthIP": self.ipv6_health_ip,
            "ClusterID": self.cluster_id,
            "Source": self.source,
            "EncryptionKey": self.encryption_key,
        }
        return json.dumps(doc, sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> "Node":
        try:
            doc = json.loads(raw)
            known = {"Name", "Cluster", "IPAddresses", "IPv4AllocCIDR", "IPv6AllocCIDR", "IPv4HealthIP",
                     "IPv6HealthIP", "ClusterID", "Source", "EncryptionKey"}
            v4, v6 = _cidr_parse(doc.get("IPv4AllocCIDR")), _cidr_parse(doc.get("IPv6AllocCIDR"))
            if v4 is not None and v4.version != 4 or v6 is not None and v6.version != 6:
                raise ValueError("allocation CIDR of the wrong family")
            addresses = tuple((str(a["Type"]), str(ipaddress.ip_address(a["IP"])))
                              for a in doc.get("IPAddresses") or [])
            return cls(
                name=str(doc["Name"]), cluster=str(doc.get("Cluster") or "default"), addresses=addresses,
                ipv4_alloc_cidr=v4, ipv6_alloc_cidr=v6,  # type: ignore[arg-type]
                ipv4_health_ip=str(doc.get("IPv4HealthIP") or ""), ipv6_health_ip=str(doc.get("IPv6HealthIP") or ""),
                cluster_id=int(doc.get("ClusterID") or 0), source=str(doc.get("Source") or ""),
                encryption_key=int(doc.get("EncryptionKey") or 0),
                extra={k: v for k, v in doc.items() if k not in known},
            )
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            raise NodeDecodeError(f"not a Cilium Node record: {e}") from e

    def element(self) -> dict[str, Any]:
        """Cilium's NodeElement (``/v1/cluster/nodes``, `cilium node list`)."""
        v4, v6 = self.ipv4_alloc_cidr, self.ipv6_alloc_cidr
        return {
            "name": self.name,
            "primary-address": {
                "ipv4": {"enabled": v4 is not None, "ip": self.tunnel_endpoint or "",
                         "alloc-range": str(v4) if v4 else ""},
                "ipv6": {"enabled": v6 is not None, "ip": self.ipv6_health_ip,
                         "alloc-range": str(v6) if v6 else ""},
            },
            "health-endpoint-address": {
                "ipv4": {"enabled": bool(self.ipv4_health_ip), "ip": self.ipv4_health_ip},
                "ipv6": {"enabled": bool(self.ipv6_health_ip), "ip": self.ipv6_health_ip},
            },
        }
