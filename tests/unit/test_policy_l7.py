"""L7 HTTP rules: validation (rules.http, POSIX ERE), resolution with Cilium's
union semantics, and ``policy trace``."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from docker_cilium import u8proto
from docker_cilium.policy import resolve
from docker_cilium.policy.api import PolicyValidationError, dump_rules, parse_rules
from docker_cilium.policy.api.l7 import PortRuleHTTP, compile_ere, parse_header
from docker_cilium.policy.resolve import PolicyEntry, trace
from tests.unit.unit_daemon import api_error

TCP = u8proto.TCP
B, C = 1000, 1001
IDS = {B: ["container:id=b"], C: ["container:id=c"]}
GET_PUBLIC = PortRuleHTTP(method="GET", path="/public")
PUT_PRIVATE = PortRuleHTTP(method="PUT", path="/private")


def _port_rule(http: list | None, port: str = "80", protocol: str | None = "TCP") -> dict:
    pp: dict = {"port": port}
    if protocol is not None:
        pp["protocol"] = protocol
    out: dict = {"ports": [pp]}
    if http is not None:
        out["rules"] = {"http": http}
    return out


def _policy(*ingress: dict, selected: str = "a") -> list[dict]:
    return [{"endpointSelector": {"matchLabels": {"id": selected}}, "ingress": list(ingress)}]


def _from(peer: str | None, *port_rules: dict) -> dict:
    entry: dict = {"toPorts": list(port_rules)}
    if peer is not None:
        entry["fromEndpoints"] = [{"matchLabels": {"id": peer}}]
    return entry


def _error(doc: list[dict]) -> str:
    with pytest.raises(PolicyValidationError) as exc:
        parse_rules(json.dumps(doc).encode())
    return str(exc.value)


# ---- parsing -------------------------------------------------------------------


def test_http_rules_parse_and_round_trip() -> None:
    doc = _policy(_from("b", _port_rule([{"method": "GET", "path": "/public"},
                                         {"method": "PUT", "path": "/path2$", "host": "^api\\.example$",
                                          "headers": ["X-My-Header: true", "X-Present"]}])))
    rules = parse_rules(json.dumps(doc).encode())
    pr = rules[0].ingress[0].to_ports[0]
    assert pr.rules == (GET_PUBLIC, PortRuleHTTP("PUT", "/path2$", "^api\\.example$", ("X-My-Header: true", "X-Present")))
    assert json.loads(dump_rules(rules))[0]["ingress"][0]["toPorts"] == doc[0]["ingress"][0]["toPorts"]
    assert parse_rules(dump_rules(rules)) == rules


def test_empty_http_list_is_a_plain_port_rule() -> None:
    rules = parse_rules(json.dumps(_policy(_from("b", _port_rule([])))).encode())
    assert rules[0].ingress[0].to_ports[0].rules is None


@pytest.mark.parametrize("protocol", ["UDP", "ANY", None])
def test_http_rules_only_on_tcp(protocol: str | None) -> None:
    msg = _error(_policy(_from("b", _port_rule([{"method": "GET"}], protocol=protocol))))
    assert msg == ("[0].ingress[0].toPorts[0].ports[0].protocol: L7 rules can only apply to TCP "
                   f'(not {protocol or "ANY"}): set "protocol": "TCP"')


@pytest.mark.parametrize(("http", "expected"), [
    ([{"path": "/a(?=b)"}], '[0].ingress[0].toPorts[0].rules.http[0].path: invalid regular expression "/a(?=b)": '
                            "(?...) groups (lookarounds, flags, non-capturing) are not POSIX ERE at position 2"),
    ([{}, {"method": "GET("}], '[0].ingress[0].toPorts[0].rules.http[1].method: invalid regular expression "GET(": '
                               "unmatched ( at position 3"),
    ([{"host": "[z-a]"}], '[0].ingress[0].toPorts[0].rules.http[0].host: invalid regular expression "[z-a]": '
                          "invalid range z-a at position 3"),
    ([{"method": 1}], "[0].ingress[0].toPorts[0].rules.http[0].method: method must be a string, got number"),
    ([{"headers": ["bad header: x"]}], '[0].ingress[0].toPorts[0].rules.http[0].headers[0]: invalid header '
                                      '"bad header: x": must be "Name" or "Name: value" with a valid HTTP field name'),
    ([{"headers": "X-A"}], "[0].ingress[0].toPorts[0].rules.http[0].headers: must be a JSON array, got string"),
    ([{"methd": "GET"}], '[0].ingress[0].toPorts[0].rules.http[0]: unknown field "methd" (did you mean "method"?)'),
    ([{"headerMatches": []}], "[0].ingress[0].toPorts[0].rules.http[0].headerMatches: headerMatches is not "
                              "supported by docker-cilium (use headers)"),
    (["GET"], "[0].ingress[0].toPorts[0].rules.http[0]: an HTTP rule must be a JSON object, got string"),
])
def test_bad_http_rules_name_the_field(http: list, expected: str) -> None:
    assert _error(_policy(_from("b", _port_rule(http)))) == expected


@pytest.mark.parametrize(("kind", "message"), [("kafka", "L7 Kafka rules are not supported by docker-cilium"),
                                               ("dns", "L7 DNS rules are not supported by docker-cilium"),
                                               ("l7proto", "generic L7 rules are not supported by docker-cilium")])
def test_other_l7_kinds_stay_unsupported(kind: str, message: str) -> None:
    doc = _policy(_from("b", {"ports": [{"port": "80", "protocol": "TCP"}], "rules": {kind: [{}]}}))
    assert _error(doc) == f"[0].ingress[0].toPorts[0].rules.{kind}: {message}"


def test_parse_header() -> None:
    assert parse_header("X-My-Header: true") == ("x-my-header", "true")
    assert parse_header("X-Present") == ("x-present", None)
    assert parse_header("X-A:b c ") == ("x-a", "b c")
    assert parse_header(" X-Empty:") == ("x-empty", "")
    for bad in ("", " : x", "a b: c", "X-A b", "X-A: a\r\nInjected: 1"):
        with pytest.raises(ValueError):
            parse_header(bad)


# ---- POSIX ERE -------------------------------------------------------------------

MATCHES = [
    ("/public", "/public", True), ("/public", "/public/x", False), ("/path1$", "/path1", True),
    ("/path1$", "/path1\n", False), ("^external-service.org$", "external-service.org", True),
    ("GET|HEAD", "HEAD", True), ("GET|HEAD", "GETHEAD", False), ("[[:alpha:]]+", "abcXYZ", True),
    ("[[:alpha:]]+", "abc1", False), ("[[:digit:][:upper:]]+", "A1", True), ("[]a]+", "]a]", True),
    ("[^]a]", "]", False), ("[^]a]", "b", True), (r"[\d]+", "\\d", True), (r"[\d]+", "1", False),
    ("[a-]+", "-a", True), (r"/a\.b", "/a.b", True), (r"/a\.b", "/axb", False), ("a{2,3}", "aaa", True),
    ("a{2,3}", "aaaa", False), ("a{", "a{", True), ("a*?", "aaa", True), ("a+?", "", True),
    ("a++", "aaa", True), ("/v[0-9]+/.*", "/v1/x\ny", True), (r"\w+", "ab_1", True), ("", "anything", True),
    ("[[.-.]]", "-", True), ("(ab|cd)+", "abcd", True), ("ä+", "ää", True),
]


@pytest.mark.parametrize(("pattern", "value", "matches"), MATCHES)
def test_ere_matches_whole_value(pattern: str, value: str, matches: bool) -> None:
    assert bool(compile_ere(pattern).fullmatch(value)) is matches


@pytest.mark.parametrize(("pattern", "reason"), [
    ("(?=a)", "(?...) groups (lookarounds, flags, non-capturing) are not POSIX ERE at position 0"),
    ("a(?!b)", "(?...) groups (lookarounds, flags, non-capturing) are not POSIX ERE at position 1"),
    ("(?i)get", "(?...) groups (lookarounds, flags, non-capturing) are not POSIX ERE at position 0"),
    ("(a", "unmatched ( at position 0"), ("a)", "unmatched ) at position 1"), ("[a", "unmatched [ at position 0"),
    ("*a", "quantifier '*' has nothing to repeat at position 0"),
    ("a|+", "quantifier '+' has nothing to repeat at position 2"),
    ("^*", "quantifier '*' has nothing to repeat at position 1"),
    (r"(a)\1", "back reference \\1 is not POSIX ERE at position 3"), (r"\bx", "unsupported escape \\b at position 0"),
    ("a\\", "trailing backslash at position 1"), ("a{3,2}", "invalid interval {3,2}: 2 < 3 at position 1"),
    ("a{256}", "interval count above 255 at position 1"), ("[[:word:]]", "unknown character class [:word:] at position 1"),
    ("[a-[:digit:]]", "a range cannot end with a character class at position 3"),
    ("[[.ab.]]", "unsupported collating element [.ab.] at position 1"),
])
def test_ere_refuses_invalid_and_python_only_syntax(pattern: str, reason: str) -> None:
    with pytest.raises(ValueError) as exc:
        compile_ere(pattern)
    assert str(exc.value) == reason


# ---- resolution: Cilium's union semantics ----------------------------------------


def _entries(doc: list[dict], labels: tuple[str, ...] = ("container:id=a",)) -> dict[tuple, object]:
    pol = resolve(parse_rules(json.dumps(doc).encode()), labels, IDS)
    return {(e.direction, e.identity, e.port, e.proto): e.l7 for e in pol.entries}


def test_rules_for_the_same_peer_and_port_are_united() -> None:
    got = _entries(_policy(_from("b", _port_rule([{"method": "GET", "path": "/public"}])),
                           _from("b", _port_rule([{"method": "PUT", "path": "/private"}]))))
    assert got == {("ingress", B, 80, TCP): (PortRuleHTTP("GET", "/public"), PortRuleHTTP("PUT", "/private"))}


def test_wildcard_peer_rules_are_merged_into_the_exact_peer_entry() -> None:
    got = _entries(_policy(_from("b", _port_rule([{"method": "GET", "path": "/public"}])),
                           _from(None, _port_rule([{"method": "PUT", "path": "/private"}]))))
    assert got == {("ingress", B, 80, TCP): (GET_PUBLIC, PUT_PRIVATE), ("ingress", 0, 80, TCP): (PUT_PRIVATE,)}


@pytest.mark.parametrize("general", [
    _from(None, _port_rule(None)),                                   # (0, 80): any peer, port 80 unfiltered
    {"fromEndpoints": [{"matchLabels": {"id": "b"}}]},               # (b, ANY): L3-only
    {"fromEndpoints": [{}]},                                         # (0..., ANY) via every cluster identity
    {"toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}]}], "fromEndpoints": [{"matchLabels": {"id": "b"}}]},
], ids=["wildcard-port", "l3-only", "all-endpoints", "same-port-plain"])
def test_a_shadowed_plain_allow_makes_the_exact_entry_plain(general: dict) -> None:
    got = _entries(_policy(_from("b", _port_rule([{"method": "GET", "path": "/public"}])), general))
    assert got[("ingress", B, 80, TCP)] is None


def test_any_peer_any_port_makes_wildcard_port_entry_plain() -> None:
    got = _entries(_policy(_from(None, _port_rule([{"method": "GET"}])), {"fromEntities": ["all"]}))
    assert got[("ingress", 0, 80, TCP)] is None and got[("ingress", 0, 0, 0)] is None


def test_plain_element_for_the_same_port_in_one_entry_wins() -> None:
    got = _entries(_policy(_from("b", _port_rule([{"method": "GET"}]), _port_rule(None))))
    assert got == {("ingress", B, 80, TCP): None}


def test_l7_does_not_leak_to_other_peers_or_ports() -> None:
    got = _entries(_policy(_from("b", _port_rule([{"method": "GET"}])),
                           _from("c", _port_rule(None)), _from("b", _port_rule(None, port="81"))))
    assert got == {("ingress", B, 80, TCP): (PortRuleHTTP("GET"),), ("ingress", C, 80, TCP): None,
                   ("ingress", B, 81, TCP): None}


def test_egress_l7_entry() -> None:
    doc = [{"endpointSelector": {"matchLabels": {"id": "a"}},
            "egress": [{"toPorts": [_port_rule([{"method": "POST", "host": "^external-service.org$"}])]}]}]
    pol = resolve(parse_rules(json.dumps(doc).encode()), ["container:id=a"], IDS)
    assert pol.entries == frozenset({PolicyEntry("egress", 0, 80, TCP, l7=(
        PortRuleHTTP(method="POST", host="^external-service.org$"),))})


# ---- trace -----------------------------------------------------------------------


def test_trace_says_redirected_to_proxy_with_the_rules() -> None:
    rules = parse_rules(json.dumps(_policy(_from("b", _port_rule([{"method": "GET", "path": "/public"}])))).encode())
    verdict, lines = trace(rules, ["container:id=b"], ["container:id=a"], 80, "TCP")
    assert verdict == "ALLOWED"
    assert '      with L7 HTTP rules [{"method":"GET","path":"/public"}]' in lines
    assert ('Ingress verdict: allowed, redirected to proxy (HTTP requests allowed: '
            '[{"method":"GET","path":"/public"}])') in lines


def test_trace_plain_allow_is_not_redirected() -> None:
    rules = parse_rules(json.dumps(_policy(_from("b", _port_rule([{"method": "GET"}])),
                                           {"fromEndpoints": [{"matchLabels": {"id": "b"}}]})).encode())
    verdict, lines = trace(rules, ["container:id=b"], ["container:id=a"], 80, "TCP")
    assert verdict == "ALLOWED" and "Ingress verdict: allowed" in lines
    assert not any("redirected" in line for line in lines)


# ---- the API: import, get, trace -----------------------------------------------

EXAMPLES = Path(__file__).resolve().parents[1] / "fixtures" / "cilium-examples" / "policies"


async def test_api_imports_cilium_http_example_and_gets_it_back(api) -> None:
    client, _ = api
    doc = json.loads((EXAMPLES / "l7/http/http.json").read_text())
    resp = await client.put("/v1/policy", data=json.dumps(doc))
    assert resp.status == 200
    got = json.loads((await (await client.get("/v1/policy")).json())["policy"])
    assert got[0]["ingress"][0]["toPorts"] == doc[0]["ingress"][0]["toPorts"]
    sel = {"from": ["container:id=x"], "to": ["container:app=myService"], "dports": ["80/TCP"]}
    body = await (await client.get("/v1/policy/resolve", json=sel)).json()
    assert body["verdict"] == "allowed"
    assert ('redirected to proxy (HTTP requests allowed: [{"method":"GET","path":"/path1$"} '
            '{"method":"PUT","path":"/path2$","headers":["X-My-Header: true"]}])') in body["log"]


async def test_api_refuses_http_rules_on_udp_naming_the_field(api) -> None:
    client, _ = api
    doc = _policy(_from("b", _port_rule([{"method": "GET"}], protocol="UDP")))
    msg = await api_error(await client.put("/v1/policy", data=json.dumps(doc)), 400)
    assert msg == ('[0].ingress[0].toPorts[0].ports[0].protocol: L7 rules can only apply to TCP (not UDP): '
                   'set "protocol": "TCP"')
    assert (await (await client.get("/v1/policy")).json())["revision"] == 0


def test_docker_guide_demo_policy_resolves_to_one_redirected_entry() -> None:
    """Cilium's Docker-guide L7 demo: app2 may GET /public on app1 (through
    the proxy), app3 gets no entry at all (denied at L3/L4)."""
    doc = (EXAMPLES / "getting-started/cilium_dkr_demo_l7-policy-230817.json").read_bytes()
    ids = {B: ["container:id=app2"], C: ["container:id=app3"]}
    pol = resolve(parse_rules(doc), ["container:id=app1"], ids)
    assert pol.ingress_enforced and not pol.egress_enforced
    assert pol.entries == frozenset({PolicyEntry("ingress", B, 80, TCP, l7=(GET_PUBLIC,))})


@pytest.mark.timeout(5)
def test_matching_time_is_linear_whatever_the_pattern():
    """A backtracking engine needs about 2**n steps for these; a client
    controls the subject (the path), so the proxy must not depend on it."""
    for pattern, subject in (("(a+)+$", "a" * 5000 + "b"), ("(/[a-z]*)*x", "/" + "a/" * 3000 + "!"),
                             ("(a|aa)+", "a" * 5000 + "b")):
        t0 = time.perf_counter()
        assert compile_ere(pattern).fullmatch(subject) is None
        assert time.perf_counter() - t0 < 0.5, pattern
