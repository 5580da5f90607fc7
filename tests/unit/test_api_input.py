"""The REST API socket's inputs that gave a 500 or were read loosely: endpoint
and identity references with non-ASCII digits, deeply nested or non-JSON
bodies. The real app in front of the agent's objects (tests/unit/unit_daemon.py)."""

from __future__ import annotations

import json

import pytest

from docker_cilium import strictjson
from tests.unit.unit_daemon import api_error


async def _serving(client) -> None:
    resp = await client.get("/v1/endpoint/1001")
    assert resp.status == 200 and (await resp.json())["id"] == 1001


@pytest.mark.parametrize("ref,needle", [
    ("%C2%B2", "invalid endpoint ID '\u00b2': expected a number in 0-65535"),  # int('²') raises: was a 500
    ("cilium-local:%C2%B2", "invalid endpoint ID 'cilium-local:\u00b2'"),
    ("%D9%A3%D9%A0%D9%A0%D9%A1", "invalid endpoint ID"),  # int('٣٠٠١') is 3001: was read as an ID
    ("%EF%BC%91%EF%BC%90%EF%BC%90%EF%BC%91", "invalid endpoint ID"),  # fullwidth １００１
    ("9" * 5000, "invalid endpoint ID '" + "9" * 80 + "...'"),  # int() of 5000 digits raises: was a 500
    ("65536", "invalid endpoint ID '65536'"),
    ("-1", "invalid endpoint ID '-1'"),
    ("+1001", "invalid endpoint ID '+1001'"),
    ("1_001", "invalid endpoint ID '1_001'"),
    ("container-id:", "nothing after 'container-id:'"),
    ("pod:x", "unknown prefix 'pod'"),
])
@pytest.mark.parametrize("suffix", ["", "/labels", "/config"])
async def test_malformed_endpoint_reference_is_a_400(api, ref, needle, suffix):
    client, _ = api
    assert needle in await api_error(await client.get(f"/v1/endpoint/{ref}{suffix}"), 400)
    await _serving(client)


@pytest.mark.parametrize("ref", ["1001", "01001", "cilium-local:1001", "container-name:app1",
                                 "container-id:c000", "docker-endpoint:" + f"{1001:064d}"[:12]])
async def test_well_formed_endpoint_references_resolve(api, ref):
    client, _ = api
    resp = await client.get(f"/v1/endpoint/{ref}")
    assert resp.status == 200 and (await resp.json())["id"] == 1001


async def test_unknown_endpoint_is_a_404(api):
    client, _ = api
    assert await api_error(await client.get("/v1/endpoint/65535"), 404) == "endpoint 65535 not found"


@pytest.mark.parametrize("ident", ["%D9%A3", "%C2%B2", "9" * 5000])
async def test_identity_number_must_be_ascii_digits(api, ident):
    """int('٣') is 3: the world identity was returned for it."""
    client, _ = api
    assert "invalid identity" in await api_error(await client.get(f"/v1/identity/{ident}"), 400)


async def test_dport_must_be_ascii_digits(api):
    client, _ = api
    resp = await client.get("/v1/policy/resolve", json={"from": ["a"], "to": ["b"], "dports": ["\u0668\u0660/TCP"]})
    assert "invalid port" in await api_error(resp, 400)


NESTED = [b"[" * 200_000, b'{"a":' * 50_000, b"[" * 65 + b"]" * 65]


@pytest.mark.parametrize("raw", NESTED, ids=["open-brackets", "open-objects", "closed-65"])
@pytest.mark.parametrize("method,path", [("PATCH", "/v1/config"), ("PUT", "/v1/policy"), ("GET", "/v1/policy"),
                                         ("DELETE", "/v1/policy"), ("PATCH", "/v1/endpoint/1001/labels"),
                                         ("PATCH", "/v1/endpoint/1001"), ("GET", "/v1/policy/resolve")])
async def test_deeply_nested_json_is_a_400(api, method, path, raw):
    client, daemon = api
    revision = daemon.policy.revision
    message = await api_error(await client.request(method, path, data=raw), 400)
    assert message.endswith("JSON nested deeper than 64 levels"), message
    assert daemon.policy.revision == revision
    await _serving(client)


@pytest.mark.parametrize("raw,needle", [
    (b'{"policy-enforcement": NaN}', "NaN is not valid JSON"),
    (b'{"policy-enforcement": Infinity}', "Infinity is not valid JSON"),
    (b'{"policy-enforcement": 1e999}', "number 1e999 is out of range"),
    (b'{"policy-enforcement": "\\udfff"}', "half of a UTF-16 surrogate pair"),
    (b'{"policy-enforcement": "\xff"}', "not valid UTF-8"),
    ("{}".encode("utf-16"), "not valid UTF-8"),
])
async def test_not_quite_json_is_a_400(api, raw, needle):
    client, daemon = api
    assert needle in await api_error(await client.patch("/v1/config", data=raw), 400)
    assert daemon.policy.enforcement == "default"


def test_depth_bound_is_exact_and_ignores_brackets_in_strings():
    strictjson.loads(b"[" * 64 + b"]" * 64)
    strictjson.loads(b'{"a":' * 63 + b"[]" + b"}" * 63)
    with pytest.raises(strictjson.JSONError, match="deeper than 64"):
        strictjson.loads(b"[" * 65 + b"]" * 65)
    # Brackets inside strings (an HTTP path regex, say) are no nesting.
    assert strictjson.loads(json.dumps(["[" * 1000, "{" * 1000, "]" * 3]).encode())[0] == "[" * 1000
    assert strictjson.loads(json.dumps([["\\\"[" * 100]]).encode()) == [["\\\"[" * 100]]
    # Pairs of a surrogate are a character; duplicate keys keep the last value as Go does.
    assert strictjson.loads(b'["\\ud83d\\ude00"]') == ["\U0001F600"]
    assert strictjson.loads(b'{"k": 1, "k": 2}') == {"k": 2}


def test_str_with_a_raw_lone_surrogate_is_refused():
    """Not only the \\u escape: a str holding half a surrogate pair cannot be
    written back as UTF-8 either, whichever decoder entry it goes through."""
    from docker_cilium.policy.api import PolicyValidationError, load_json
    from docker_cilium.policy.api.parse import iter_json_array

    with pytest.raises(strictjson.JSONError, match="not valid UTF-8"):
        strictjson.loads('{"k": "\ud800"}')
    with pytest.raises(strictjson.JSONError, match="not valid UTF-8"):
        list(strictjson.iter_array('["\udfff"]'))
    with pytest.raises(PolicyValidationError, match="not valid UTF-8"):
        load_json('["\ud800"]')
    with pytest.raises(PolicyValidationError, match="not valid UTF-8"):
        list(iter_json_array('[{}, "\ud800"]'))
    assert strictjson.loads('["\U0001F600"]') == ["\U0001F600"]


@pytest.mark.parametrize("name", ["0.", "x.y", "cilium_lxc.old"])
async def test_map_name_with_a_dot_is_a_400(api, name):
    """Found by tests/unit/test_fuzz_properties.py: bpffs refuses any name
    with a '.' (EPERM from bpf_obj_get), which GET /v1/map/0. answered as a 500."""
    client, _ = api
    message = await api_error(await client.get(f"/v1/map/{name}"), 400)
    assert f"invalid map name {name!r}" in message and "'.'" in message
    await _serving(client)


@pytest.mark.parametrize("method,path", [("GET", "/v1/policy/resolve"), ("PATCH", "/v1/config"),
                                         ("PATCH", "/v1/endpoint/1001"), ("PUT", "/v1/service/7"),
                                         ("PATCH", "/v1/prefilter"), ("PUT", "/v1/policy")])
async def test_unknown_field_message_is_bounded(api, method, path):
    """Found by tests/unit/test_fuzz_properties.py: an unknown field named
    with 2,000 characters came back whole in the 400's message."""
    client, _ = api
    key = "0" * 2000
    body = [{"endpointSelector": {}, key: 1}] if path == "/v1/policy" else {key: 1}
    message = await api_error(await client.request(method, path, data=json.dumps(body)), 400)
    assert f"unknown field {'0' * 80}"[:-1] in message.replace("'", "").replace('"', "") and len(message) < 300, message
    await _serving(client)
