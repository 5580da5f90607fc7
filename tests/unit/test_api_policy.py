"""The agent REST API for policy, identity, endpoint labels/config and agent
config, served by the agent's own objects minus the kernel
(tests/unit/unit_daemon.py). /v1/healthz, i.e. the real Daemon.status, is
checked on a real agent in tests/e2e/test_etcd_agent.py."""

from __future__ import annotations

import json

import pytest

from docker_cilium.api.openapi import load_document
from tests.unit.unit_daemon import api_error

L3_RULE = [{
    "endpointSelector": {"matchLabels": {"id": "app1"}},
    "ingress": [{"fromEndpoints": [{"matchLabels": {"id": "app2"}}],
                 "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}]}]}],
    "labels": ["name=l4-rule"],
}]


# --- /policy -----------------------------------------------------------------
async def test_policy_import_get_delete(api):
    client, daemon = api
    resp = await client.get("/v1/policy")
    assert resp.status == 200
    assert await resp.json() == {"revision": 0, "policy": "[]"}

    resp = await client.put("/v1/policy", data=json.dumps(L3_RULE))
    assert resp.status == 200
    body = await resp.json()
    assert body["revision"] == 1
    rules = json.loads(body["policy"])
    assert rules[0]["endpointSelector"]["matchLabels"] and len(rules) == 1

    resp = await client.get("/v1/policy", params={"labels": "name=l4-rule"})
    assert len(json.loads((await resp.json())["policy"])) == 1
    assert "name=nope" in await api_error(await client.get("/v1/policy", params={"labels": "name=nope"}), 404)

    resp = await client.delete("/v1/policy", json=["name=l4-rule"])
    assert resp.status == 200
    assert await resp.json() == {"revision": 2, "policy": "[]"}


async def test_policy_invalid_changes_nothing(api):
    client, daemon = api
    await client.put("/v1/policy", data=json.dumps(L3_RULE))
    bad = [{"endpointSelector": {}, "ingress": [{"toPorts": [{"ports": [{"port": "0"}]}]}]}]
    msg = await api_error(await client.put("/v1/policy", data=json.dumps(bad)), 400)
    assert msg.startswith("[0].ingress[0].toPorts[0].ports[0].port:")
    msg = await api_error(await client.put("/v1/policy", data=b"[{"), 400)
    assert "invalid JSON" in msg
    await api_error(await client.put("/v1/policy", data=b"{}"), 400)
    assert "empty" in await api_error(await client.put("/v1/policy", data=b""), 400)
    body = await (await client.get("/v1/policy")).json()
    assert body["revision"] == 1 and len(json.loads(body["policy"])) == 1


async def test_policy_get_unmatched_labels_message_is_bounded(api):
    """Found by tests/unit/test_fuzz_properties.py: a 404 for 1000 labels
    echoed every one back (3 KB; a 1 MB body, a 1 MB message)."""
    client, _ = api
    resp = await client.get("/v1/policy", data=json.dumps([f"k{i}=v" for i in range(1000)]))
    message = await api_error(resp, 404)
    assert len(message) < 300, message
    assert message.startswith("no policy rules found with labels k0=v, k1=v, ") and "(and 990 more)" in message


async def test_policy_delete_needs_labels_or_all(api):
    client, daemon = api
    await client.put("/v1/policy", data=json.dumps(L3_RULE))
    assert "all=true" in await api_error(await client.delete("/v1/policy"), 400)
    assert "array of strings" in await api_error(await client.delete("/v1/policy", json={"a": 1}), 400)
    assert "malformed JSON" in await api_error(await client.delete("/v1/policy", data=b"[x"), 400)
    await api_error(await client.delete("/v1/policy", params={"all": "maybe"}), 400)
    resp = await client.delete("/v1/policy", params={"all": "true"})
    assert await resp.json() == {"revision": 2, "policy": "[]"}
    # nothing matched: revision unchanged
    resp = await client.delete("/v1/policy", json=["name=l4-rule"])
    assert (await resp.json())["revision"] == 2


async def test_policy_resolve(api):
    client, daemon = api
    await client.put("/v1/policy", data=json.dumps(L3_RULE))
    sel = {"from": ["container:id=app2"], "to": ["container:id=app1"], "dports": ["80/TCP"]}
    body = await (await client.get("/v1/policy/resolve", json=sel)).json()
    assert body["verdict"] == "allowed"
    assert "Final verdict: ALLOWED" in body["log"]
    body = await (await client.get("/v1/policy/resolve", json={**sel, "dports": ["81/TCP"]})).json()
    assert body["verdict"] == "denied"
    # query form, and Cilium's nested TraceSelector
    resp = await client.get("/v1/policy/resolve",
                            params={"from": "container:id=app2", "to": "container:id=app1", "dports": "80"})
    assert (await resp.json())["verdict"] == "allowed"
    nested = {"from": {"labels": ["container:id=app2"]},
              "to": {"labels": ["container:id=app1"], "dports": [{"port": 80, "protocol": "TCP"}]}}
    assert (await (await client.get("/v1/policy/resolve", json=nested)).json())["verdict"] == "allowed"
    # no ports: only L3 rules could allow it
    resp = await client.get("/v1/policy/resolve", json={"from": sel["from"], "to": sel["to"]})
    assert (await resp.json())["verdict"] == "denied"


@pytest.mark.parametrize("body, status, needle", [
    ({"from": ["a"], "to": ["b"], "bogus": 1}, 400, "unknown field 'bogus'"),
    ({"from": ["a"], "to": ["b"], "dports": ["0/TCP"]}, 400, "out of range"),
    ({"from": ["a"], "to": ["b"], "dports": ["80/SCTP"]}, 400, "invalid protocol"),
    ({"from": ["a"], "to": ["b"], "dports": ["http"]}, 400, "invalid port"),
    ({"from": [], "to": ["b"]}, 400, "'from' and 'to'"),
    ({"from": "a", "to": ["b"]}, 400, "from must be a JSON array"),
    ([1], 400, "JSON object"),
])
async def test_policy_resolve_bad_input(api, body, status, needle):
    client, _ = api
    assert needle in await api_error(await client.get("/v1/policy/resolve", json=body), status)


async def test_policy_resolve_unknown_query(api):
    client, _ = api
    assert "unknown query parameter" in await api_error(
        await client.get("/v1/policy/resolve", params={"from": "a", "to": "b", "x": "1"}), 400)


# --- /identity -----------------------------------------------------------------
async def test_identities(api):
    client, _ = api
    idents = await (await client.get("/v1/identity")).json()
    assert {"id": 2, "labels": ["reserved:world"]} in idents
    assert {"id": 256, "labels": ["container:id=app1"]} in idents
    assert [i["id"] for i in idents] == sorted(i["id"] for i in idents)
    sel = await (await client.get("/v1/identity", params={"labels": "id=app2"})).json()
    assert sel == [{"id": 257, "labels": ["container:id=app2"]}]
    assert await (await client.get("/v1/identity/256")).json() == {"id": 256, "labels": ["container:id=app1"]}
    assert "not found" in await api_error(await client.get("/v1/identity/999"), 404)
    assert "expected a number" in await api_error(await client.get("/v1/identity/abc"), 400)
    await api_error(await client.get("/v1/identity", params={"labels": "=x"}), 400)


# --- /endpoint/{id}/labels|config, PATCH /endpoint/{id} ---------------------
async def test_endpoint_labels(api):
    client, daemon = api
    body = await (await client.get("/v1/endpoint/1001/labels")).json()
    assert body == {"orchestration-identity": ["container:id=app1"], "user": [], "disabled": [],
                    "effective": ["container:id=app1"]}
    before = daemon.endpoint(1001).identity
    resp = await client.patch("/v1/endpoint/1001/labels", json={"add": ["container:role=web"]})
    assert resp.status == 200
    body = await resp.json()
    assert body["user"] == ["container:role=web"]
    assert body["effective"] == ["container:id=app1", "container:role=web"]
    assert daemon.endpoint(1001).identity not in (before, 5)  # a new identity for the new labels
    resp = await client.patch("/v1/endpoint/1001/labels", json={"delete": ["container:role=web"]})
    assert (await resp.json())["effective"] == ["container:id=app1"]
    assert daemon.endpoint(1001).identity == before
    # Removing a container label disables it (Docker still reports it).
    body = await (await client.patch("/v1/endpoint/1001/labels", json={"delete": ["container:id=app1"]})).json()
    assert body["orchestration-identity"] == ["container:id=app1"] and body["disabled"] == ["container:id=app1"]
    # A known container without labels has the empty label set's identity (as
    # Cilium's), not reserved:init, which passes no traffic.
    assert body["effective"] == [] and daemon.endpoint(1001).identity not in (before, 5)
    # The agent's own sources cannot be claimed.
    assert "reserved for the agent" in await api_error(
        await client.patch("/v1/endpoint/1001/labels", json={"add": ["reserved:host"]}), 400)
    assert "unknown field 'remove'" in await api_error(
        await client.patch("/v1/endpoint/1001/labels", json={"remove": ["x"]}), 400)
    assert "both added and deleted" in await api_error(
        await client.patch("/v1/endpoint/1001/labels", json={"add": ["a"], "delete": ["a"]}), 400)
    await api_error(await client.patch("/v1/endpoint/1001/labels", json={"add": "a"}), 400)
    await api_error(await client.patch("/v1/endpoint/1001/labels", json={"add": ["bad:=x"]}), 400)
    assert "not found" in await api_error(await client.get("/v1/endpoint/4242/labels"), 404)
    await api_error(await client.get("/v1/endpoint/bogus:1/labels"), 400)


async def test_endpoint_config(api):
    client, daemon = api
    assert await (await client.get("/v1/endpoint/1001/config")).json() == {"PolicyEnforcement": "default"}
    resp = await client.patch("/v1/endpoint/1001/config", json={"PolicyEnforcement": "always"})
    assert await resp.json() == {"PolicyEnforcement": "always"}
    resp = await client.patch("/v1/endpoint/container-name:app1/config",
                              json={"options": {"PolicyEnforcement": "never"}})
    assert await resp.json() == {"PolicyEnforcement": "never"}
    msg = await api_error(await client.patch("/v1/endpoint/1001/config", json={"PolicyEnforcement": "sometimes"}), 400)
    assert "must be one of default, always, never" in msg
    assert "unknown endpoint option 'Debug'" in await api_error(
        await client.patch("/v1/endpoint/1001/config", json={"Debug": "true"}), 400)
    assert "malformed JSON" in await api_error(await client.patch("/v1/endpoint/1001/config", data=b"{"), 400)
    await api_error(await client.patch("/v1/endpoint/999/config", json={"PolicyEnforcement": "always"}), 404)
    assert daemon.endpoint(1001).policy_enforcement == "never"


async def test_patch_endpoint(api):
    client, daemon = api
    resp = await client.patch("/v1/endpoint/1002", json={"labels": ["container:id=app2", "container:x=y"],
                                                         "policy-enforcement": "always"})
    assert resp.status == 200, await resp.text()
    model = await resp.json()
    assert model["labels"]["effective"] == ["container:id=app2", "container:x=y"]
    assert model["labels"]["user"] == ["container:x=y"]
    assert model["policy-enforcement"] == "always"
    assert "unknown field 'state'" in await api_error(await client.patch("/v1/endpoint/1002", json={"state": "ready"}), 400)
    # invalid enforcement: nothing changes, labels included
    await api_error(await client.patch("/v1/endpoint/1002", json={"labels": [], "policy-enforcement": "x"}), 400)
    assert daemon.endpoint(1002).user_labels == ["container:x=y"]
    assert daemon.endpoint(1002).policy_enforcement == "always"


# --- /config -------------------------------------------------------------------
async def test_config(api):
    client, daemon = api
    cfg = await (await client.get("/v1/config")).json()
    assert cfg["policy-enforcement"] == "default"
    resp = await client.patch("/v1/config", json={"policy-enforcement": "always"})
    assert resp.status == 200
    assert (await resp.json())["policy-enforcement"] == "always"
    resp = await client.patch("/v1/config", json={"options": {"PolicyEnforcement": "never"}})
    assert (await resp.json())["options"] == {"Debug": "Disabled", "PolicyEnforcement": "never"}
    assert daemon.policy.enforcement == "never"
    msg = await api_error(await client.patch("/v1/config", json={"policy-enforcement": "strict"}), 400)
    assert msg == "invalid value 'strict' for policy-enforcement: must be one of default, always, never"
    assert "read-only option 'MTU'" in await api_error(
        await client.patch("/v1/config", json={"options": {"MTU": "9000"}}), 400)
    assert "unknown field 'mtu'" in await api_error(await client.patch("/v1/config", json={"mtu": 9000}), 400)
    await api_error(await client.patch("/v1/config", data=b"nope"), 400)
    assert daemon.policy.enforcement == "never"
    # still serving after all that
    assert (await client.get("/v1/config")).status == 200


# --- OpenAPI -------------------------------------------------------------------
async def test_openapi_document_covers_every_route(api):
    client, _ = api
    resp = await client.get("/v1/openapi.json")
    assert resp.status == 200
    doc = await resp.json()
    assert doc == json.loads(load_document())
    assert doc["openapi"].startswith("3.0")
    base = doc["servers"][0]["url"]
    documented = {(m.upper(), base + p) for p, ops in doc["paths"].items() for m in ops if m != "parameters"}
    served = set()
    for route in client.app.router.routes():
        info = route.resource.get_info() if route.resource else {}
        path = info.get("path") or info.get("formatter")
        if route.method in ("HEAD", "*") or not path.startswith("/v1/"):
            continue
        served.add((route.method, path))
    assert served, "no routes found"
    assert served - documented == set(), "routes missing from openapi.json"
    assert documented - served == set(), "openapi.json documents routes the agent does not serve"
    # every $ref resolves
    text = json.dumps(doc)
    for name in {part.split('"')[0] for part in text.split("#/components/schemas/")[1:]}:
        assert name in doc["components"]["schemas"], name


async def test_unknown_path_is_json_404(api):
    client, _ = api
    assert "no such API path" in await api_error(await client.get("/v1/nope"), 404)
