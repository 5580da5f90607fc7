"""The ``cilium_vxlan`` device of tunnel mode (Cilium's ``--tunnel vxlan``).

One VXLAN device in external (collect_metadata) mode, UDP port 8472: it has
no VNI or remote of its own; the datapath sets both per packet with
bpf_skb_set_tunnel_key() (bpf_src/lib/encap.h) and reads them back on
receive in ``from-overlay``. No learning (the tunnel map, not the FDB, says
where a range lives), rp_filter 0 (packets arrive on it for addresses the
host routes through cilium_host). A device of that name with other settings
(an earlier, different run) is replaced.

Synchronous (pyroute2's sync API): the agent calls it off the event loop.
"""

from __future__ import annotations

from typing import Any

import structlog
from pyroute2 import IPRoute

from docker_cilium import defaults
from docker_cilium.datapath.link import write_sysctl

log = structlog.get_logger(__name__)


def _vxlan_data(link: Any) -> dict[str, Any] | None:
    """The IFLA_INFO_DATA of a vxlan link as a dict, None for another kind."""
    info = link.get_attr("IFLA_LINKINFO")
    if info is None or info.get_attr("IFLA_INFO_KIND") != "vxlan":
        return None
    data = info.get_attr("IFLA_INFO_DATA")
    return {name: value for name, value in data["attrs"]} if data is not None else {}


def _is_ours(data: dict[str, Any] | None, port: int) -> bool:
    return (data is not None and data.get("IFLA_VXLAN_COLLECT_METADATA") == 1
            and data.get("IFLA_VXLAN_PORT") == port and data.get("IFLA_VXLAN_LEARNING") == 0)


def ensure_device(mtu: int, name: str = defaults.VXLAN_DEVICE, port: int = defaults.VXLAN_PORT) -> int:
    """Create (or fix) the external VXLAN device, up with ``mtu``; its ifindex."""
    with IPRoute() as ip:
        found = ip.link_lookup(ifname=name)
        if found and not _is_ours(_vxlan_data(ip.get_links(found[0])[0]), port):
            log.warning("tunnel.device_replaced", device=name, reason="not an external vxlan on our port")
            ip.link("del", index=found[0])
            found = []
        if not found:
            ip.link("add", ifname=name, kind="vxlan", vxlan_collect_metadata=1, vxlan_port=port,
                    vxlan_learning=0, mtu=mtu)
            found = ip.link_lookup(ifname=name)
        idx = found[0]
        ip.link("set", index=idx, state="up", mtu=mtu)
    write_sysctl(f"net.ipv4.conf.{name}.rp_filter", "0")
    return idx


def remove_device(name: str = defaults.VXLAN_DEVICE) -> bool:
    """Delete the device (``--tunnel disabled`` after a tunnel run); whether it was there."""
    with IPRoute() as ip:
        found = ip.link_lookup(ifname=name)
        if not found:
            return False
        ip.link("del", index=found[0])
    return True


def device_settings(name: str = defaults.VXLAN_DEVICE) -> dict[str, Any] | None:
    """What the device is now (mtu, state, port, external, learning), None if absent."""
    with IPRoute() as ip:
        found = ip.link_lookup(ifname=name)
        if not found:
            return None
        link = ip.get_links(found[0])[0]
        data = _vxlan_data(link) or {}
        return {"ifindex": found[0], "mtu": link.get("mtu"), "up": bool(link["flags"] & 1),
                "port": data.get("IFLA_VXLAN_PORT"), "external": data.get("IFLA_VXLAN_COLLECT_METADATA") == 1,
                "learning": data.get("IFLA_VXLAN_LEARNING")}


def tunnel_mtu(base_mtu: int, mode: str) -> int:
    """The MTU endpoints and the routes to other nodes get: the uplink's less
    the VXLAN overhead in tunnel mode."""
    return base_mtu - defaults.VXLAN_OVERHEAD if mode == "vxlan" else base_mtu
