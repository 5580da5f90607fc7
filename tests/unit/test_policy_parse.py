"""Parsing and validation of policy JSON (docker_cilium.policy.api)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from docker_cilium.policy.api import (
    EndpointSelector,
    PolicyValidationError,
    Rule,
    RuleLabel,
    dump_rules,
    parse_rules,
)

EXAMPLES = Path(__file__).resolve().parents[1] / "fixtures" / "cilium-examples" / "policies"

OK = "ok"
# Every example file and its expected outcome: "ok" or the start of the error.
EXPECTED = {
    "getting-started/cilium_dkr_demo_l3-l4-policy-170817.json": OK,
    "getting-started/cilium_dkr_demo_l7-policy-230817.json": OK,
    "getting-started/l3-l4-policy.json": OK,
    "getting-started/l7-policy.json": OK,
    "kubernetes/namespace/isolate-namespaces.json": OK,
    "kubernetes/namespace/kubedns-policy.json": OK,
    "kubernetes/namespace/namespace-policy.json": OK,
    "kubernetes/serviceaccount/serviceaccount-policy.json": OK,
    "l3/cidr/cidr.json": OK,
    "l3/egress-allow-all/egress-allow-all.json": OK,
    "l3/egress-default-deny/egress-default-deny.json": OK,
    "l3/entities/host.json": OK,
    "l3/entities/world.json": OK,
    "l3/fqdn/fqdn.json": "[0].egress[1].toFQDNs: not supported by docker-cilium (Kubernetes/cloud feature)",
    "l3/ingress-allow-all/ingress-allow-all.json": OK,
    "l3/requires/requires.json": OK,
    "l3/service/service-labels.json": "[0].egress[0].toServices: not supported by docker-cilium (Kubernetes/cloud feature)",
    "l3/service/service.json": "[0].egress[0].toServices: not supported by docker-cilium (Kubernetes/cloud feature)",
    "l3/simple/l3.json": OK,
    "l3/simple/l3_egress.json": OK,
    "l4/cidr_l4_combined.json": OK,
    "l4/from_init.json": OK,
    "l4/init.json": OK,
    "l4/l3_l4_combined.json": OK,
    "l4/l4.json": OK,
    "l4/multi_rule.json": OK,
    "l7/http/http.json": OK,
    "l7/http/l7_multi.json": OK,
    "l7/http/simple/l7.json": OK,
    "l7/kafka/kafka-role.json": "[0].ingress[0].toPorts[0].rules.kafka: L7 Kafka rules are not supported",
    "l7/kafka/kafka.json": "[0].ingress[0].toPorts[0].rules.kafka: L7 Kafka rules are not supported",
}


def test_every_example_file_is_listed() -> None:
    found = {p.relative_to(EXAMPLES).as_posix() for p in EXAMPLES.rglob("*.json")}
    assert found == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example(name: str) -> None:
    data = (EXAMPLES / name).read_bytes()
    expected = EXPECTED[name]
    if expected == OK:
        rules = parse_rules(data)
        assert rules and all(isinstance(r, Rule) for r in rules)
        # round trip: to_dict() gives a document that parses to the same rules
        assert parse_rules(dump_rules(rules)) == rules
        # the API's indented form (built with loop turns) is json.dumps' indent=2
        assert dump_rules(rules) == json.dumps([r.to_dict() for r in rules], indent=2)
    else:
        with pytest.raises(PolicyValidationError) as exc:
            parse_rules(data)
        assert str(exc.value).startswith(expected)
        assert "not supported" in str(exc.value)


def test_roundtrip_keeps_user_shape() -> None:
    doc = json.loads((EXAMPLES / "l3/cidr/cidr.json").read_text())
    rules = parse_rules(doc)
    out = [r.to_dict() for r in rules]
    doc[0]["labels"][0]["source"] = "unspec"  # Cilium prints the default source
    assert out == doc


def test_roundtrip_full_rule() -> None:
    doc = [
        {
            "endpointSelector": {
                "matchLabels": {"container:id": "app1", "role": "x"},
                "matchExpressions": [
                    {"key": "env", "operator": "In", "values": ["a", "b"]},
                    {"key": "k8s:tier", "operator": "DoesNotExist"},
                ],
            },
            "ingress": [
                {"fromEndpoints": [{}], "fromRequires": [{"matchLabels": {"env": "prod"}}]},
                {"fromCIDRSet": [{"cidr": "10.0.0.0/8", "except": ["10.96.0.0/12"]}], "toPorts": [{"ports": [{"port": "53", "protocol": "ANY"}]}]},
                {"fromEntities": ["world", "host"]},
            ],
            "egress": [{"toCIDR": ["1.2.3.4/32", "f00d::/64"]}, {}],
            "labels": [{"key": "name", "value": "x", "source": "k8s"}, {"key": "flag", "source": "unspec"}],
            "description": "everything",
        }
    ]
    rules = parse_rules(json.dumps(doc))
    assert [r.to_dict() for r in rules] == [{**doc[0], "egress": [{"toCIDR": ["1.2.3.4/32", "f00d::/64"]}, {}]}]


def test_protocol_normalised_and_empty_is_any() -> None:
    rule = parse_rules('[{"endpointSelector":{},"ingress":[{"toPorts":[{"ports":[{"port":"80","protocol":"tcp"},{"port":"53"}]}]}]}]')[0]
    ports = rule.ingress[0].to_ports[0].ports
    assert [(p.port, p.protocol) for p in ports] == [("80", "TCP"), ("53", "ANY")]


def test_string_labels_and_description() -> None:
    rule = parse_rules('[{"endpointSelector":{},"labels":["k8s:name=x","plain"],"description":"d"}]')[0]
    assert rule.labels == (RuleLabel("name", "x", "k8s"), RuleLabel("plain", "", "unspec"))
    assert rule.label_strings == ("k8s:name=x", "unspec:plain")
    assert rule.description == "d"


def test_fromcidr_with_toports_is_allowed() -> None:
    """fromCIDR combines with toPorts (only peer kinds are exclusive): both
    survive parsing and the round trip back to JSON."""
    doc = [{"endpointSelector": {}, "ingress": [{"fromCIDR": ["10.0.0.0/8"], "toPorts": [{"ports": [{"port": "80"}]}]}]}]
    (rule,) = parse_rules(json.dumps(doc))
    (entry,) = rule.ingress
    assert [str(c.network) for c in entry.cidr] == ["10.0.0.0/8"]
    assert entry.l4_pairs() == {(80, 6), (80, 17)}  # protocol ANY: TCP and UDP
    assert entry.to_dict() == {"fromCIDR": ["10.0.0.0/8"], "toPorts": [{"ports": [{"port": "80", "protocol": "ANY"}]}]}


def test_empty_selector_selects_everything() -> None:
    sel = EndpointSelector.from_json({}, "x")
    assert sel.matches([]) and sel.matches(["reserved:host"])


def test_accepts_bytes_and_decoded_list() -> None:
    doc = [{"endpointSelector": {"matchLabels": {"id": "a"}}}]
    assert parse_rules(json.dumps(doc).encode()) == parse_rules(doc)


def _rule(**entry: object) -> list[dict[str, object]]:
    return [{"endpointSelector": {"matchLabels": {"id": "app1"}}, "ingress": [{"fromEndpoints": [{}]}, entry]}]


def _ports(*ports: object) -> list[dict[str, object]]:
    return _rule(toPorts=[{"ports": list(ports)}])


BAD = [
    ('[{"endpointSelector": {}', "invalid JSON at line 1 column 25: Expecting ',' delimiter"),
    ('[\n  {"endpointSelector": {},}\n]', "invalid JSON at line 2 column 27: Expecting property name enclosed in double quotes"),
    ('{"endpointSelector": {}}', "a policy must be a JSON array of rules, got a JSON object"),
    ('"x"', "a policy must be a JSON array of rules, got a JSON string"),
    ('[42]', "[0]: a rule must be a JSON object, got number"),
    ('[{"ingress": []}]', "[0]: endpointSelector is required"),
    ('[{"endpointSelector": null}]', "[0]: endpointSelector is required"),
    (_rule(fromEndpoint=[{}]), '[0].ingress[1]: unknown field "fromEndpoint" (did you mean "fromEndpoints"?)'),
    ([{"endpointSelector": {}, "ingres": []}], '[0]: unknown field "ingres" (did you mean "ingress"?)'),
    ([{"endpointSelector": {"matchLabel": {}}}], '[0].endpointSelector: unknown field "matchLabel" (did you mean "matchLabels"?)'),
    (_ports({"port": "0", "protocol": "TCP"}), "[0].ingress[1].toPorts[0].ports[0].port: port 0 is out of range 1-65535"),
    (_ports({"port": "65536"}), "[0].ingress[1].toPorts[0].ports[0].port: port 65536 is out of range 1-65535"),
    (_ports({"port": "80"}, {"port": "abc"}), '[0].ingress[1].toPorts[0].ports[1].port: port "abc" is not a number'),
    (_ports({"port": "-1"}), '[0].ingress[1].toPorts[0].ports[0].port: port "-1" is not a number'),
    (_ports({"port": 80}), '[0].ingress[1].toPorts[0].ports[0].port: port must be a string like "80", got number'),
    (_ports(*[{"port": str(p)} for p in range(1, 42)]), "[0].ingress[1].toPorts[0].ports: too many ports (41), at most 40 are allowed per rule"),
    (_ports({"port": "80", "protocol": "ICMP"}), '[0].ingress[1].toPorts[0].ports[0].protocol: invalid protocol "ICMP", must be TCP, UDP or ANY'),
    (_ports(), "[0].ingress[1].toPorts[0].ports: at least one port is required"),
    (_rule(fromCIDR=["10.0.0.300/8"]), '[0].ingress[1].fromCIDR[0]: invalid CIDR "10.0.0.300/8"'),
    (_rule(fromCIDRSet=[{"cidr": "nope"}]), '[0].ingress[1].fromCIDRSet[0].cidr: invalid CIDR "nope"'),
    (_rule(fromCIDRSet=[{"cidr": "192.168.0.0/16", "except": ["10.96.0.0/12"]}]), "[0].ingress[1].fromCIDRSet[0].except[0]: except 10.96.0.0/12 is not inside cidr 192.168.0.0/16"),
    (_rule(fromCIDRSet=[{"cidr": "10.0.0.0/16", "except": ["10.0.0.0/8"]}]), "[0].ingress[1].fromCIDRSet[0].except[0]: except 10.0.0.0/8 is not inside cidr 10.0.0.0/16"),
    (_rule(fromCIDRSet=[{"except": ["10.0.0.0/8"]}]), "[0].ingress[1].fromCIDRSet[0]: cidr is required"),
    (_rule(fromEntities=["internet"]), '[0].ingress[1].fromEntities[0]: unsupported entity "internet"'),
    (_rule(fromEndpoints=[{}], fromCIDR=["10.0.0.0/8"]), "[0].ingress[1]: combining fromEndpoints and fromCIDR in one entry is not supported"),
    (_rule(fromEntities=["world"], fromCIDRSet=[{"cidr": "10.0.0.0/8"}]), "[0].ingress[1]: combining fromCIDRSet and fromEntities in one entry is not supported"),
    ([{"endpointSelector": {}, "egress": [{"toGroups": [{}]}]}], "[0].egress[0].toGroups: not supported by docker-cilium (Kubernetes/cloud feature)"),
    (_rule(toPorts=[{"ports": [{"port": "53"}], "rules": {"dns": [{}]}}]), "[0].ingress[1].toPorts[0].rules.dns: L7 DNS rules are not supported by docker-cilium"),
    (_rule(fromEndpoints=[None]), "[0].ingress[1].fromEndpoints[0]: selector must not be null"),
    (_rule(fromEndpoints={}), "[0].ingress[1].fromEndpoints: must be a JSON array, got object"),
    ([{"endpointSelector": {"matchExpressions": [{"key": "a", "operator": "Equals", "values": ["x"]}]}}], '[0].endpointSelector.matchExpressions[0].operator: invalid operator "Equals", must be one of In, NotIn, Exists, DoesNotExist'),
    ([{"endpointSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]}}], "[0].endpointSelector.matchExpressions[0].values: operator In needs at least one value"),
    ([{"endpointSelector": {"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]}}], "[0].endpointSelector.matchExpressions[0].values: operator Exists takes no values"),
    ([{"endpointSelector": {"matchLabels": {"a": 1}}}], "[0].endpointSelector.matchLabels.a: label value must be a string, got number"),
    ([{"endpointSelector": {}, "labels": [{"value": "x"}]}], "[0].labels[0]: key is required"),
    ([{"endpointSelector": {}, "description": 5}], "[0].description: description must be a string, got number"),
    ([{"endpointSelector": {}, "ingressDeny": []}], "[0].ingressDeny: deny policies are not supported by docker-cilium"),
]


@pytest.mark.parametrize("data,message", BAD, ids=[m.split(":")[0] + " " + m.split(": ", 1)[-1][:30] for _, m in BAD])
def test_malformed(data: object, message: str) -> None:
    if not isinstance(data, str):
        data = json.dumps(data)
    with pytest.raises(PolicyValidationError) as exc:
        parse_rules(data)
    assert str(exc.value).startswith(message), str(exc.value)


def test_error_carries_path_and_reason() -> None:
    with pytest.raises(PolicyValidationError) as exc:
        parse_rules(json.dumps(_ports({"port": "0"})))
    assert exc.value.path == "[0].ingress[1].toPorts[0].ports[0].port"
    assert exc.value.reason == "port 0 is out of range 1-65535"
