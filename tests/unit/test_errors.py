"""Each error class reaches its HTTP status through the real REST and plugin apps.

Two halves: every class of ``docker_cilium.errors`` raised behind a real route
comes out with its class's status (and an unknown exception as a logged 500);
then the domain packages' own errors (IPAM, endpoint manager, policy, KV
store, schema) reach the status they carry through the real handlers, with
no message text deciding it. Plus the etcd backend's error classes, chosen by
gRPC status code.
"""

from __future__ import annotations

import json
from typing import Any

import aetcd.exceptions
import aetcd.rpc
import pytest
from aiohttp.test_utils import TestClient, TestServer
from grpc.aio import Metadata

from docker_cilium import errors
from docker_cilium.api.app import build_app as build_api
from docker_cilium.ipam.allocator import IPAM
from docker_cilium.ipam.ranges import NodeAddressing
from docker_cilium.kvstore import KVStoreError
from docker_cilium.kvstore.etcd import EtcdBackend, LeaseNotFound
from docker_cilium.plugin.app import build_app as build_plugin
from docker_cilium.plugin.ipam import IpamDriver
from docker_cilium.plugin.network import NetworkDriver

CLASSES = [(cls, status) for status, cls in sorted(errors.STATUS_CLASSES.items())]
EXPECTED = {errors.BadRequest: 400, errors.NotFound: 404, errors.Conflict: 409, errors.PayloadTooLarge: 413,
            errors.AllocationFailed: 502, errors.Unavailable: 503, errors.InsufficientStorage: 507}


def test_each_class_carries_its_status():
    assert {cls: cls.status for cls, _ in CLASSES} == EXPECTED
    assert errors.APIError("x").status == 500 and errors.APIError("x", 418).status == 418
    for cls, status in CLASSES:  # what the CLI client rebuilds from a reply
        got = errors.error_for_status(status, "msg")
        assert type(got) is cls and got.status == status and str(got) == "msg"
    teapot = errors.error_for_status(418, "short and stout")
    assert type(teapot) is errors.APIError and teapot.status == 418


# --- every class through the real apps ------------------------------------------

class RaisingDaemon:
    """Answers /v1/healthz by raising ``exc``: the route and middleware are the real ones."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    async def status(self) -> dict[str, Any]:
        raise self.exc


class RaisingDomain:
    """Stands in for the EndpointManager and IPAM: the call each test route makes raises."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc
        self.node = None

    async def delete_network(self, network_id: str) -> None:
        raise self.exc

    def decode_pool_id(self, pool_id: str) -> None:
        raise self.exc


async def _client(app) -> TestClient:
    client = TestClient(TestServer(app))
    await client.start_server()
    return client


@pytest.mark.parametrize("cls,status", CLASSES + [(RuntimeError, 500)], ids=lambda v: getattr(v, "__name__", v))
async def test_rest_answers_each_class_with_its_status(cls, status):
    client = await _client(build_api(RaisingDaemon(cls("the reason"))))  # type: ignore[arg-type]
    try:
        resp = await client.get("/v1/healthz")
        body = await resp.json()
    finally:
        await client.close()
    assert resp.status == status and body["code"] == status
    want = "internal error: the reason" if cls is RuntimeError else "the reason"
    assert body["message"] == want


@pytest.mark.parametrize("cls,status", CLASSES + [(RuntimeError, 500)], ids=lambda v: getattr(v, "__name__", v))
async def test_plugin_answers_each_class_with_its_status(cls, status):
    domain = RaisingDomain(cls("the reason"))
    client = await _client(build_plugin(NetworkDriver(domain), IpamDriver(domain)))  # type: ignore[arg-type]
    try:
        net = await client.post("/NetworkDriver.DeleteNetwork", data=json.dumps({"NetworkID": "n1"}))
        net_body = json.loads(await net.text())
        ipam = await client.post("/IpamDriver.ReleasePool", data=json.dumps({"PoolID": "CiliumPoolv4"}))
        ipam_body = json.loads(await ipam.text())
    finally:
        await client.close()
    if cls is RuntimeError:
        assert net_body == {"Err": "NetworkDriver.DeleteNetwork: internal error: the reason"}
    else:
        assert net_body == {"Err": "the reason"}
    assert net.status == ipam.status == status
    assert ipam_body["Err"] == ipam_body["Error"]  # IPAM replies carry both keys


# --- the domain's own errors through the real handlers ------------------------------

async def _status(resp) -> tuple[int, str]:
    body = await resp.json()
    assert body["code"] == resp.status
    return resp.status, body["message"]


async def test_rest_domain_errors(api):
    client, daemon = api
    # IPAM: an address in use is a Conflict, a bad one a BadRequest.
    assert (await client.post("/v1/ipam/10.2.0.77")).status == 200
    assert await _status(await client.post("/v1/ipam/10.2.0.77")) == (409, "IP 10.2.0.77 is already allocated (to api)")
    status, msg = await _status(await client.post("/v1/ipam/10.9.9.9"))
    assert status == 400 and "outside pool" in msg
    # Endpoint manager: unknown reference vs malformed reference.
    assert await _status(await client.get("/v1/endpoint/4242")) == (404, "endpoint 4242 not found")
    status, msg = await _status(await client.get("/v1/endpoint/bogus:1"))
    assert status == 400 and "unknown prefix 'bogus'" in msg
    # Policy: a validation error names the field; a bad query label is the repository's refusal.
    status, msg = await _status(await client.put("/v1/policy", data=b'[{"endpointSelector": {}, "ingres": []}]'))
    assert status == 400 and "ingres" in msg
    status, msg = await _status(await client.get("/v1/policy", params={"labels": "=x"}))
    assert status == 400 and "invalid label" in msg
    # Endpoint label and option changes refused by the regenerator.
    status, msg = await _status(await client.patch("/v1/endpoint/1001/config", json={"Bogus": "x"}))
    assert status == 400 and "unknown endpoint option 'Bogus'" in msg
    status, msg = await _status(await client.patch("/v1/config", json={"policy-enforcement": "sometimes"}))
    assert status == 400 and "invalid value 'sometimes'" in msg
    # A body over aiohttp's limit (1 MiB) is a 413 in the API's own shape.
    status, msg = await _status(await client.patch("/v1/config", data=b" " * (1024 ** 2 + 1)))
    assert status == 413 and "request body too large" in msg
    # The KV store gone: the operation is Unavailable (503), and the agent still serves.
    await daemon.store.close()
    status, msg = await _status(await client.put("/v1/policy", data=b"[]"))
    assert status == 503 and "not connected" in msg
    assert (await client.get("/v1/endpoint/1001")).status == 200


async def test_rest_ipam_exhaustion_is_502_and_all_or_nothing(api):
    client, daemon = api
    # /30 and /126 node ranges: one IPv4 address (.2) and two IPv6 ones to give.
    daemon.ipam = IPAM(daemon.store, NodeAddressing.derive("192.0.2.2", "10.3.0.0/30", "f00d::a03:0:0:0/126"))
    for _ in range(2):
        assert (await client.post("/v1/ipam", params={"family": "ipv6"})).status == 201
    status, msg = await _status(await client.post("/v1/ipam", params={"family": "ipv6"}))
    assert (status, msg) == (502, "no free address left in f00d::a03:0:0:0/126")
    # Both families: the IPv4 address taken before IPv6 ran out is given back.
    status, _ = await _status(await client.post("/v1/ipam"))
    assert status == 502 and "10.3.0.2" not in daemon.ipam.allocations()
    got = await (await client.post("/v1/ipam", params={"family": "ipv4"})).json()
    assert got["address"] == {"ipv4": "10.3.0.2"}


async def test_plugin_domain_errors(plugin):
    client, mgr, links, ipam = plugin

    async def call(method: str, body: Any) -> tuple[int, str | None]:
        resp = await client.post(f"/{method}", data=body if isinstance(body, bytes) else json.dumps(body))
        return resp.status, json.loads(await resp.text()).get("Err")

    assert await call("IpamDriver.RequestAddress", {"PoolID": "CiliumPoolv4", "Address": "10.77.3.4"}) == (200, None)
    status, msg = await call("IpamDriver.RequestAddress", {"PoolID": "CiliumPoolv4", "Address": "10.77.3.4"})
    assert (status, msg) == (409, "IP 10.77.3.4 is already allocated (to docker)")
    status, msg = await call("NetworkDriver.Join", {"NetworkID": "n", "EndpointID": "e", "SandboxKey": "/x"})
    assert (status, msg) == (404, "endpoint e not found")
    status, msg = await call("NetworkDriver.CreateNetwork", {"NetworkID": 7})
    assert (status, msg) == (400, "NetworkDriver.CreateNetwork: NetworkID must be a string, got int")
    status, msg = await call("NetworkDriver.CreateNetwork", b"{" + b" " * (1024 ** 2) + b"}")
    assert status == 413 and "request body too large" in msg
    await ipam.store.close()  # the store gone: 503, not an internal error
    status, msg = await call("IpamDriver.RequestAddress", {"PoolID": "CiliumPoolv4", "Address": ""})
    assert status == 503 and "not connected" in msg


# --- etcd: error classes from gRPC status codes, not message text ------------------

def _aetcd_error(code: aetcd.rpc.StatusCode, details: str) -> aetcd.exceptions.ClientError:
    """An aetcd error as aetcd raises it: the gRPC error chained as its cause."""
    rpc_error = aetcd.rpc.AioRpcError(code, Metadata(), Metadata(), details=details)
    try:
        raise aetcd.exceptions.ClientError(details) from rpc_error
    except aetcd.exceptions.ClientError as exc:
        return exc


def test_etcd_errors_classified_by_grpc_status():
    backend = EtcdBackend(["127.0.0.1:2379"])
    lost = backend._err("put k", _aetcd_error(aetcd.rpc.StatusCode.NOT_FOUND, "some other wording"))
    assert type(lost) is LeaseNotFound and "put k failed" in str(lost)
    # The words alone decide nothing: an outage mentioning a lease is no lease loss.
    down = backend._err("put k", _aetcd_error(aetcd.rpc.StatusCode.UNAVAILABLE, "requested lease not found"))
    assert type(down) is KVStoreError
    assert down.status == lost.status == 503


async def test_etcd_leased_write_renews_only_on_lease_not_found():
    backend = EtcdBackend(["127.0.0.1:2379"])
    backend._lease = type("Lease", (), {"id": 1})()
    renewed: list[int] = []

    async def renew(dead_id: int) -> None:
        renewed.append(dead_id)
        backend._lease = type("Lease", (), {"id": 2})()

    backend._renew_session = renew  # type: ignore[method-assign]
    calls: list[int | None] = []

    def op_failing_with(exc: Exception):
        async def op(lease_id: int | None) -> str:
            calls.append(lease_id)
            if len(calls) == 1:
                raise exc
            return "written"
        return op

    assert await backend._leased(True, op_failing_with(backend._err(
        "put k", _aetcd_error(aetcd.rpc.StatusCode.NOT_FOUND, "x")))) == "written"
    assert calls == [1, 2] and renewed == [1]
    calls.clear()
    with pytest.raises(KVStoreError):
        await backend._leased(True, op_failing_with(backend._err(
            "put k", _aetcd_error(aetcd.rpc.StatusCode.UNAVAILABLE, "requested lease not found"))))
    assert calls == [2] and renewed == [1]


async def test_plugin_error_echoing_a_huge_id_is_bounded(plugin):
    """Found by tests/unit/test_fuzz_properties.py (CILIUM_FUZZ=soak): a
    CreateEndpoint naming a 2,000-character network came back with all of it
    in "network ... not found"; every APIError message is now cut at
    MAX_MESSAGE characters and says how many more there were."""
    client = plugin[0]
    resp = await client.post("/NetworkDriver.CreateEndpoint", data=json.dumps(
        {"NetworkID": "0" * 100_000, "EndpointID": "e" * 64, "Interface": {"Address": "", "AddressIPv6": ""}}))
    err = (await resp.json(content_type=None))["Err"]
    assert resp.status == 404 and err.startswith("network 000") and len(err) < errors.MAX_MESSAGE + 50, err[:200]
    assert err.endswith(" more characters)"), err[-100:]
