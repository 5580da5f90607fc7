"""Odd input through real dockerd and straight onto the running agent's two
sockets: a clear error, nothing allocated, and the agent keeps serving."""

from __future__ import annotations

import ipaddress
import json

import pytest

from docker_cilium.cli.client import _UnixConnection
from tests.e2e.conftest import TEST_LABEL, create_network, exec_, net_settings, run_container
from tests.e2e.test_docker_flow import node_ranges
from tests.helpers import docker


def post(socket_path: str, method: str, path: str, body: bytes) -> tuple[int, dict]:
    conn = _UnixConnection(socket_path, 30)
    try:
        conn.request(method, path, body=body)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def ipam_counts(agent) -> dict:
    """`cilium status`'s "N/M allocated from RANGE" per family."""
    return agent.cli_json("status")["ipam"]


@pytest.mark.parametrize("mtu,needle", [
    ("Infinity", '"Infinity" is not a whole number of bytes (expected an integer in 68-65535)'),
    ("NaN", '"NaN" is not a whole number of bytes'),
    ("1500.5", '"1500.5" is not a whole number of bytes'),
    ("70000", "70000 is outside 68-65535"),
    ("-5", '"-5" is not a whole number of bytes'),
])
def test_docker_network_create_with_bad_mtu_is_refused(agent, names, mtu, needle):
    net = names("mtu")
    created = docker("network", "create", "--label", TEST_LABEL, "-d", "cilium", "--ipam-driver", "cilium",
                     "-o", f"com.docker.network.driver.mtu={mtu}", net, check=False)
    assert created.returncode != 0, f"MTU {mtu} was accepted"
    assert f"option com.docker.network.driver.mtu: {needle}" in created.stderr, created.stderr
    assert "internal error" not in created.stderr
    # Positive control: a valid MTU is taken and reaches the container.
    ok = create_network(names("ok"), "-d", "cilium", "--ipam-driver", "cilium",
                        "-o", "com.docker.network.driver.mtu=1400")
    c = run_container(names("c"), ok)
    assert exec_(c, "cat", "/sys/class/net/cilium0/mtu").stdout.strip() == "1400"


def test_docker_run_with_an_address_outside_the_pool_is_refused(agent, names):
    v4range, _ = node_ranges(agent)
    net = names("ipr")
    sub = ipaddress.ip_network(f"{v4range.network_address + 256 * 7}/24")
    ip_range = ipaddress.ip_network(f"{sub.network_address + 128}/25")
    create_network(net, "-d", "cilium", "--ipam-driver", "cilium", "--subnet", str(sub), "--ip-range", str(ip_range))
    a = run_container(names("a"), net)
    assert ipaddress.ip_address(net_settings(a, net)["IPAddress"]) in ip_range
    outside = str(sub.network_address + 5)  # inside --subnet (dockerd's check) but outside --ip-range
    run = docker("run", "-d", "--label", TEST_LABEL, "--name", names("b"), "--net", net, "--ip", outside,
                 "busybox", "sleep", "60", check=False)
    assert run.returncode != 0 and f"IP {outside} is outside pool {ip_range}" in run.stderr, run.stderr


@pytest.mark.parametrize("body,needle", [
    ({"PoolID": "CiliumPoolv4:8.8.8.0/24", "Address": "8.8.8.8"}, "is not a pool of this node"),
    ({"PoolID": "CiliumPoolv6:8.8.8.0/24", "Address": ""}, "is not an IPv6 subnet"),
    ({"PoolID": "CiliumPoolv6", "Address": "0.0.0.0"}, "0.0.0.0 is not an IPv6 address"),
    ({"PoolID": "CiliumPoolv4:0.0.0.0/0", "Address": ""}, "is not a pool of this node"),
])
def test_forged_pool_ids_on_the_plugin_socket(agent, body, needle):
    before = ipam_counts(agent)
    status, reply = post(agent.plugin_socket, "POST", "/IpamDriver.RequestAddress", json.dumps(body).encode())
    assert status == 400 and needle in reply["Err"], reply
    assert ipam_counts(agent) == before
    status, reply = post(agent.plugin_socket, "POST", "/NetworkDriver.GetCapabilities", b"")
    assert status == 200 and reply["Scope"] == "local"


@pytest.mark.parametrize("raw", [b"[" * 200_000, b'{"a":' * 50_000])
def test_deep_json_on_both_sockets_is_a_400(agent, raw):
    status, reply = post(agent.plugin_socket, "POST", "/NetworkDriver.CreateNetwork", raw)
    assert status == 400 and reply["Err"].endswith("JSON nested deeper than 64 levels"), reply
    status, reply = post(agent.api_socket, "PUT", "/v1/policy", raw)
    assert status == 400 and reply["message"].endswith("JSON nested deeper than 64 levels"), reply
    status, reply = post(agent.api_socket, "GET", "/v1/endpoint/%C2%B2", b"")
    assert status == 400 and "invalid endpoint ID" in reply["message"], reply
    assert agent.cli_json("status")["cilium"]["state"] == "Ok"
