"""Replay every request dockerd 20.10 sent in a real capture through the plugin app."""

from __future__ import annotations

import json
from pathlib import Path

from tests.unit.conftest import NODE

CAPTURE = Path(__file__).parent.parent / "fixtures" / "dockerd-20.10-capture.jsonl"
CT = "application/vnd.docker.plugins.v1.2+json"


def load_capture() -> list[dict]:
    return [json.loads(line) for line in CAPTURE.read_text().splitlines() if line.strip()]


async def test_replay_full_capture(plugin):
    client, mgr, links, ipam = plugin
    entries = load_capture()
    assert len(entries) >= 50
    seen_methods = set()
    gateway4: dict[str, str] = {}  # network ID -> the one IPv4 gateway Join must name
    for entry in entries:
        method = entry["path"].lstrip("/")
        seen_methods.add(method)
        if method == "NetworkDriver.CreateNetwork":
            body = json.loads(entry["body"])
            (v4,) = body["IPv4Data"]
            # Our IPAM: the router on cilium_host. Docker's IPAM: its pool's gateway.
            gateway4[body["NetworkID"]] = (str(NODE.router4) if v4["AddressSpace"] == "CiliumLocal"
                                           else v4["Gateway"].split("/")[0])
        resp = await client.post(entry["path"], data=entry["body"].encode(), headers=entry["headers"])
        text = await resp.text()
        assert resp.status == 200, f"{method}: {resp.status} {text}"
        assert resp.headers["Content-Type"] == CT
        assert text.endswith("\n")
        reply = json.loads(text)
        assert "Err" not in reply and "Error" not in reply, (method, reply)
        want = json.loads(entry["reply"]) if entry["status"] == 200 else {}
        if method in ("IpamDriver.RequestPool", "IpamDriver.GetDefaultAddressSpaces", "Plugin.Activate",
                      "NetworkDriver.GetCapabilities"):
            assert reply == want, method
        if method == "IpamDriver.RequestAddress":
            # Same node range as the capture; addresses are /32 and /128.
            assert reply["Address"].startswith(("10.77.0.", "f00d::a4d:0:0:"))
            assert reply["Address"].endswith(("/32", "/128"))
        if method == "NetworkDriver.Join":
            assert reply["InterfaceName"]["DstPrefix"] == "cilium"
            assert reply["InterfaceName"]["SrcName"].startswith("tmp")
            assert reply["DisableGatewayService"] is True
            body = json.loads(entry["body"])
            assert reply["Gateway"] == gateway4[body["NetworkID"]], body["NetworkID"]
            ep = mgr.endpoints[body["EndpointID"]]
            if ep.ipv6:
                assert reply["GatewayIPv6"] == "f00d::a4d:0:0:1"
            else:
                assert "GatewayIPv6" not in reply
                assert all(":" not in r["Destination"] for r in reply["StaticRoutes"])
            # Never a 0.0.0.0/0 static route beside an IPv4 gateway ("file exists").
            assert all(r["Destination"] not in ("0.0.0.0/0", "::/0") for r in reply["StaticRoutes"])
        if method == "NetworkDriver.CreateEndpoint":
            # dockerd gave the addresses: echo nothing but the MAC it left empty.
            assert set(reply) <= {"Interface"}
            assert set(reply.get("Interface", {})) <= {"MacAddress"}
    # Both kinds of network were joined: one on our IPAM, one on Docker's.
    assert sorted(gateway4.values()) == ["10.77.0.1", "172.18.0.1"]
    assert {"NetworkDriver.CreateNetwork", "NetworkDriver.Join", "IpamDriver.ReleasePool",
            "NetworkDriver.DeleteNetwork"} <= seen_methods
    # Everything the capture created it also removed: nothing leaks.
    assert mgr.endpoints == {}
    assert mgr.networks == {}
    assert links.links == {}
    assert ipam.allocations() == {}
    assert links.host_addresses == set()
