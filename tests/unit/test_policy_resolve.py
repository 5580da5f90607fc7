"""Policy evaluation: repository, resolve() and trace()."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from docker_cilium.policy import (
    EndpointPolicy,
    PolicyEntry,
    PolicyRepositoryError,
    PolicyValidationError,
    Repository,
    cidr_identity_labels,
    cidr_prefixes,
    parse_rules,
    resolve,
    trace,
)

EXAMPLES = Path(__file__).resolve().parents[1] / "fixtures" / "cilium-examples" / "policies"

L3_DEMO = (
    '[{"labels":[{"key":"name","value":"l3-rule"}],"endpointSelector":{"matchLabels":{"id":"app1"}},'
    '"ingress":[{"fromEndpoints":[{"matchLabels":{"id":"app2"}}],'
    '"toPorts":[{"ports":[{"port":"80","protocol":"TCP"}]}]}]}]'
)
APP1, APP2, APP3 = ["container:id=app1"], ["container:id=app2"], ["container:id=app3"]
IDS = {256: APP1, 257: APP2, 258: APP3}


def repo_of(*docs: Any) -> Repository:
    repo = Repository()
    for doc in docs:
        repo.add(doc if isinstance(doc, (str, bytes)) else json.dumps(doc))
    return repo


def example(name: str) -> bytes:
    return (EXAMPLES / name).read_bytes()


def ingress_ids(policy: EndpointPolicy) -> set[int]:
    return {e.identity for e in policy.entries if e.direction == "ingress"}


def E(direction: str, identity: int, port: int = 0, proto: int = 0) -> PolicyEntry:
    return PolicyEntry(direction, identity, port, proto)


def allows(policy: EndpointPolicy, direction: str, identity: int, port: int = 0, proto: int = 0) -> bool:
    """The policy-map lookup of bpf_src/lib/policy.h, as a test oracle: exact
    (identity, port, proto), (identity, any), (any, port, proto), (any, any);
    port-less traffic (ICMP) only matches L3-only entries. The privileged
    suite checks the real lookup against packets."""
    if not (policy.ingress_enforced if direction == "ingress" else policy.egress_enforced):
        return True
    keys = {(identity, 0, 0), (0, 0, 0)}
    if port and proto:
        keys |= {(identity, port, proto), (0, port, proto)}
    return any((e.identity, e.port, e.proto) in keys for e in policy.entries if e.direction == direction)


# --------------------------------------------------------------- handbook demo


def test_handbook_l3_demo() -> None:
    repo = repo_of(L3_DEMO)
    p = resolve(repo, APP1, IDS)
    assert p.ingress_enforced and not p.egress_enforced
    assert p.entries == {E("ingress", 257, 80, 6)}
    assert p.revision == repo.revision == 1
    assert allows(p, "ingress", 257, 80, 6)
    assert not allows(p, "ingress", 257, 81, 6)
    assert not allows(p, "ingress", 258, 80, 6)
    assert not allows(p, "ingress", 257)  # ICMP: no L3-only entry
    assert allows(p, "egress", 258, 1234, 17)  # egress not enforced


def test_handbook_l3_demo_other_endpoints_unaffected() -> None:
    repo = repo_of(L3_DEMO)
    for labels in (APP2, APP3):
        p = resolve(repo, labels, IDS)
        assert not p.ingress_enforced and not p.egress_enforced and not p.entries


# ------------------------------------------------------------------ selectors

PEERS = {
    256: ["container:id=app1"],
    300: ["container:role=web", "container:env=prod"],
    301: ["k8s:role=web", "k8s:env=dev"],
    302: ["container:role=db"],
    303: ["container:env=prod"],
}


def selected_by(selector: dict[str, Any]) -> set[int]:
    doc = [{"endpointSelector": {"matchLabels": {"id": "app1"}}, "ingress": [{"fromEndpoints": [selector]}]}]
    p = resolve(repo_of(doc), ["container:id=app1"], PEERS)
    assert all(e.port == 0 and e.proto == 0 for e in p.entries)
    return ingress_ids(p)


@pytest.mark.parametrize(
    "selector,expected",
    [
        ({"matchLabels": {"role": "web"}}, {300, 301}),  # no source: any source
        ({"matchLabels": {"any:role": "web"}}, {300, 301}),
        ({"matchLabels": {"container:role": "web"}}, {300}),
        ({"matchLabels": {"k8s:role": "web"}}, {301}),
        ({"matchLabels": {"role": "web", "env": "prod"}}, {300}),  # terms AND
        ({"matchExpressions": [{"key": "role", "operator": "In", "values": ["web", "db"]}]}, {300, 301, 302}),
        ({"matchExpressions": [{"key": "container:role", "operator": "In", "values": ["web", "db"]}]}, {300, 302}),
        # NotIn also selects identities without the key (Kubernetes semantics);
        # the reserved identities are cluster identities too
        ({"matchExpressions": [{"key": "role", "operator": "NotIn", "values": ["web"]}]}, {256, 302, 303, 1, 3, 4, 5, 6}),
        ({"matchExpressions": [{"key": "env", "operator": "Exists"}]}, {300, 301, 303}),
        ({"matchExpressions": [{"key": "k8s:env", "operator": "Exists"}]}, {301}),
        ({"matchExpressions": [{"key": "env", "operator": "DoesNotExist"}, {"key": "role", "operator": "Exists"}]}, {302}),
        ({"matchLabels": {"env": "prod"}, "matchExpressions": [{"key": "role", "operator": "DoesNotExist"}]}, {303}),
        ({"matchLabels": {"reserved:host": ""}}, {1}),
        ({"matchLabels": {"reserved:world": ""}}, {2}),  # explicit: world may be selected
        ({}, {1, 3, 4, 5, 6, 256, 300, 301, 302, 303}),  # {} = all cluster endpoints, not world
    ],
)
def test_selector_forms(selector: dict[str, Any], expected: set[int]) -> None:
    assert selected_by(selector) == expected


def test_endpoint_selector_matchlabels_by_source() -> None:
    doc = [{"endpointSelector": {"matchLabels": {"k8s:id": "app1"}}, "egress": [{}]}]
    repo = repo_of(doc)
    assert not resolve(repo, ["container:id=app1"], IDS).egress_enforced
    assert resolve(repo, ["k8s:id=app1"], IDS).egress_enforced


def test_empty_selector_selects_every_endpoint() -> None:
    repo = repo_of(example("kubernetes/namespace/kubedns-policy.json"))
    p = resolve(repo, APP3, IDS)
    assert p.egress_enforced and not p.entries  # no kube-dns identity known
    ids = {**IDS, 400: ["k8s:io.kubernetes.pod.namespace=kube-system", "k8s:k8s-app=kube-dns"]}
    assert resolve(repo, APP3, ids).entries == {E("egress", 400, 53, 17)}


def test_init_selector() -> None:
    repo = repo_of(example("l4/init.json"))
    p = resolve(repo, ["reserved:init"], IDS)
    assert p.ingress_enforced and p.egress_enforced
    assert p.entries == {E("ingress", 1), E("egress", 0, 53, 17)}
    assert not resolve(repo, APP1, IDS).entries


def test_endpoint_selectors_ignore_world_and_cidr_identities() -> None:
    ids = {**IDS, 500: cidr_identity_labels("10.0.0.0/8")}
    repo = repo_of(example("l3/egress-allow-all/egress-allow-all.json"))
    p = resolve(repo, ["container:role=frontend"], ids)
    assert {e.identity for e in p.entries} == {1, 3, 4, 5, 6, 256, 257, 258}


# ------------------------------------------------------------------ L4 / ANY


def test_l4_only_rule_is_wildcard_identity() -> None:
    p = resolve(repo_of(example("l4/l4.json")), ["container:app=myService"], IDS)
    assert p.egress_enforced and not p.ingress_enforced
    assert p.entries == {E("egress", 0, 80, 6)}
    assert allows(p, "egress", 12345, 80, 6) and not allows(p, "egress", 12345, 443, 6)


def test_any_protocol_expands_to_tcp_and_udp() -> None:
    doc = [{"endpointSelector": {}, "ingress": [{"fromEndpoints": [{"matchLabels": {"id": "app2"}}], "toPorts": [{"ports": [{"port": "53", "protocol": "any"}, {"port": "8080"}]}]}]}]
    p = resolve(repo_of(doc), APP1, IDS)
    assert p.entries == {E("ingress", 257, 53, 6), E("ingress", 257, 53, 17), E("ingress", 257, 8080, 6), E("ingress", 257, 8080, 17)}


def test_separate_entries_or() -> None:
    ids = {300: ["container:role=frontend"], 301: ["container:role=other"]}
    p = resolve(repo_of(example("l4/multi_rule.json")), ["container:role=backend"], ids)
    assert p.entries == {E("ingress", 300), E("ingress", 0, 80, 6)}
    assert allows(p, "ingress", 300, 9999, 6) and allows(p, "ingress", 301, 80, 6)
    assert not allows(p, "ingress", 301, 81, 6)
    p2 = resolve(repo_of(example("l4/l3_l4_combined.json")), ["container:role=backend"], ids)
    assert p2.entries == {E("ingress", 300, 80, 6)}


def test_union_of_rules() -> None:
    extra = [{"endpointSelector": {"matchLabels": {"id": "app1"}}, "ingress": [{"fromEndpoints": [{"matchLabels": {"id": "app3"}}]}]}]
    p = resolve(repo_of(L3_DEMO, extra), APP1, IDS)
    assert p.entries == {E("ingress", 257, 80, 6), E("ingress", 258)}


# ------------------------------------------------------------ enforcement


def test_egress_default_deny() -> None:
    repo = repo_of(example("l3/egress-default-deny/egress-default-deny.json"))
    p = resolve(repo, ["container:role=restricted"], IDS)
    assert p.egress_enforced and not p.ingress_enforced and p.entries == frozenset()
    assert not allows(p, "egress", 2, 80, 6) and allows(p, "ingress", 2, 80, 6)


def test_empty_section_list_does_not_enforce() -> None:
    p = resolve(repo_of([{"endpointSelector": {}, "egress": []}]), APP1, IDS)
    assert not p.egress_enforced


def test_enforcement_modes() -> None:
    repo = repo_of(L3_DEMO)
    always = resolve(repo, APP2, IDS, "always")
    assert always.ingress_enforced and always.egress_enforced and not always.entries
    always1 = resolve(repo, APP1, IDS, "always")
    assert always1.egress_enforced and always1.entries == {E("ingress", 257, 80, 6)}
    never = resolve(repo, APP1, IDS, "never")
    assert not never.ingress_enforced and not never.egress_enforced and not never.entries
    with pytest.raises(ValueError):
        resolve(repo, APP1, IDS, "sometimes")


def test_allow_localhost() -> None:
    p = resolve(repo_of(L3_DEMO), APP1, IDS, allow_localhost=True)
    assert E("ingress", 1) in p.entries
    assert not resolve(repo_of(L3_DEMO), APP2, IDS, allow_localhost=True).entries


# ------------------------------------------------------------------ requires

PROD = {300: ["container:env=prod", "container:id=a"], 301: ["container:env=dev", "container:id=b"], 302: ["container:env=prod", "container:id=c"]}


def test_requires_alone_denies_everything() -> None:
    p = resolve(repo_of(example("l3/requires/requires.json")), ["container:env=prod"], PROD)
    assert p.ingress_enforced and not p.entries


def test_requires_restricts_allows_from_other_rules() -> None:
    allow_all = [{"endpointSelector": {"matchLabels": {"env": "prod"}}, "ingress": [{"fromEndpoints": [{}]}]}]
    allow_b = [{"endpointSelector": {"matchLabels": {"env": "prod"}}, "ingress": [{"fromEndpoints": [{"matchLabels": {"id": "b"}}]}]}]
    repo = repo_of(example("l3/requires/requires.json"), allow_all, allow_b)
    p = resolve(repo, ["container:env=prod", "container:id=a"], PROD)
    assert ingress_ids(p) == {300, 302}  # b (dev) denied although allowed twice


def test_requires_expands_wildcard_peers() -> None:
    doc = [
        {"endpointSelector": {"matchLabels": {"env": "prod"}}, "ingress": [{"fromRequires": [{"matchLabels": {"env": "prod"}}]}]},
        {"endpointSelector": {"matchLabels": {"env": "prod"}}, "ingress": [{"toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}]}]}, {"fromEntities": ["all"]}]},
    ]
    p = resolve(repo_of(doc), ["container:env=prod"], PROD)
    assert p.entries == {E("ingress", 300, 80, 6), E("ingress", 302, 80, 6), E("ingress", 300), E("ingress", 302)}
    assert not allows(p, "ingress", 0, 80, 6)


def test_requires_only_applies_to_its_direction_and_endpoints() -> None:
    doc = [
        {"endpointSelector": {"matchLabels": {"env": "prod"}}, "ingress": [{"fromRequires": [{"matchLabels": {"env": "prod"}}]}]},
        {"endpointSelector": {}, "egress": [{"toEntities": ["all"]}], "ingress": [{"toPorts": [{"ports": [{"port": "22", "protocol": "TCP"}]}]}]},
    ]
    repo = repo_of(doc)
    assert resolve(repo, ["container:env=dev"], PROD).entries == {E("egress", 0), E("ingress", 0, 22, 6)}
    assert resolve(repo, ["container:env=prod"], PROD).entries == {E("egress", 0), E("ingress", 300, 22, 6), E("ingress", 302, 22, 6)}


# ------------------------------------------------------------------ entities

ENT_IDS = {**IDS, 500: cidr_identity_labels("10.0.0.0/8"), 501: cidr_identity_labels("192.0.2.0/24")}


@pytest.mark.parametrize(
    "entity,expected",
    [
        ("host", {1}),
        ("init", {5}),
        ("remote-node", {6}),
        ("world", {2, 500, 501}),
        ("cluster", {1, 3, 4, 5, 6, 256, 257, 258}),
        ("all", {0}),
    ],
)
def test_entities(entity: str, expected: set[int]) -> None:
    doc = [{"endpointSelector": {}, "ingress": [{"fromEntities": [entity]}]}]
    p = resolve(repo_of(doc), APP1, ENT_IDS)
    assert ingress_ids(p) == expected
    assert all(e.port == 0 for e in p.entries)


def test_entity_examples() -> None:
    p = resolve(repo_of(example("l3/entities/host.json")), ["container:env=dev"], ENT_IDS)
    assert p.entries == {E("egress", 1)}
    p = resolve(repo_of(example("l3/entities/world.json")), ["container:role=public"], ENT_IDS)
    assert p.entries == {E("ingress", 2), E("ingress", 500), E("ingress", 501)}
    p = resolve(repo_of(example("l4/from_init.json")), ["container:app=myService"], ENT_IDS)
    assert p.entries == {E("ingress", 5, 53, 17)}


# ---------------------------------------------------------------------- CIDR


def test_cidr_identity_labels() -> None:
    labels = cidr_identity_labels("10.96.0.0/12")
    assert "reserved:world" in labels
    assert {"cidr:10.96.0.0/12", "cidr:10.96.0.0/11", "cidr:10.0.0.0/8", "cidr:0.0.0.0/0"} <= labels
    assert len(labels) == 13 + 1
    v6 = cidr_identity_labels("f00d::/16")
    assert {"cidr:f00d::/16", "cidr:f000::/8", "cidr:::/0", "reserved:world"} <= v6 and len(v6) == 18


def test_cidr_prefixes_of_example() -> None:
    repo = repo_of(example("l3/cidr/cidr.json"))
    assert cidr_prefixes(repo) == {
        "20.1.1.1/32",
        "10.0.0.0/10",
        "10.64.0.0/11",
        "10.112.0.0/12",
        "10.128.0.0/9",
        "10.96.0.0/12",  # the except itself
    }


def test_cidr_with_except_selects_identities() -> None:
    repo = repo_of(example("l3/cidr/cidr.json"))
    prefixes = {
        600: "10.1.0.0/16",  # inside 10.0.0.0/8, outside the except -> allowed
        601: "10.0.0.0/10",  # a subtraction result itself -> allowed
        602: "10.96.0.0/12",  # the except -> denied
        603: "10.100.0.0/16",  # inside the except -> denied
        604: "10.0.0.0/8",  # wider than the allowed blocks -> denied
        605: "20.1.1.1/32",  # toCIDR -> allowed
        606: "11.0.0.0/8",  # outside -> denied
        607: "0.0.0.0/0",
        608: "10.200.1.1/32",  # inside 10.128.0.0/9 -> allowed
    }
    ids = {**IDS, **{i: cidr_identity_labels(p) for i, p in prefixes.items()}}
    p = resolve(repo, ["container:app=myService"], ids)
    assert p.egress_enforced and not p.ingress_enforced
    assert {e.identity for e in p.entries} == {600, 601, 605, 608}
    assert all(e.port == 0 and e.proto == 0 for e in p.entries)


def test_cidr_never_selects_endpoints_or_world() -> None:
    doc = [{"endpointSelector": {}, "egress": [{"toCIDR": ["0.0.0.0/0"]}]}]
    ids = {**IDS, 700: cidr_identity_labels("0.0.0.0/0"), 701: cidr_identity_labels("f00d::/64")}
    p = resolve(repo_of(doc), APP1, ids)
    assert {e.identity for e in p.entries} == {700}


def test_cidr_with_ports() -> None:
    ids = {**IDS, 700: cidr_identity_labels("192.0.2.0/24"), 701: cidr_identity_labels("192.0.2.7/32")}
    p = resolve(repo_of(example("l4/cidr_l4_combined.json")), ["container:role=crawler"], ids)
    assert p.entries == {E("egress", 700, 80, 6), E("egress", 701, 80, 6)}
    assert cidr_prefixes(repo_of(example("l4/cidr_l4_combined.json"))) == {"192.0.2.0/24"}


def test_cidr_ipv6_and_bare_ip() -> None:
    doc = [{"endpointSelector": {}, "ingress": [{"fromCIDRSet": [{"cidr": "f00d::/16", "except": ["f00d:1::/32"]}]}, {"fromCIDR": ["1.2.3.4"]}]}]
    repo = repo_of(doc)
    prefixes = cidr_prefixes(repo)
    assert "1.2.3.4/32" in prefixes and "f00d:1::/32" in prefixes and "f00d::/32" in prefixes
    assert len(prefixes) == 16 + 1 + 1  # 16 blocks for f00d::/16 minus a /32, the except, the IP
    ids = {800: cidr_identity_labels("f00d:2::/48"), 801: cidr_identity_labels("f00d:1:1::/48"), 802: cidr_identity_labels("1.2.3.4/32")}
    assert ingress_ids(resolve(repo, APP1, ids)) == {800, 802}


# ---------------------------------------------------------------- repository


def test_repository_revisions_and_get() -> None:
    repo = Repository()
    assert repo.revision == 0 and len(repo) == 0
    assert repo.add(L3_DEMO) == 1
    assert repo.add(example("l3/simple/l3_egress.json")) == 2
    assert len(repo.get()) == 2
    assert [r.label_strings for r in repo.get(["name=l3-rule"])] == [("unspec:name=l3-rule",)]
    assert repo.get(["name=l3-egress-rule"]) == [repo.rules[1]]
    assert repo.get(["unspec:name=l3-rule"]) == repo.get(["name=l3-rule"])
    assert repo.get(["k8s:name=l3-rule"]) == []


def test_repository_add_rule_objects() -> None:
    repo = Repository()
    rules = parse_rules(L3_DEMO)
    assert repo.add(rules) == 1 and repo.rules == tuple(rules)
    assert repo.add(json.loads(L3_DEMO)) == 2 and len(repo) == 2


def test_failed_import_changes_nothing() -> None:
    repo = repo_of(L3_DEMO)
    bad = [json.loads(L3_DEMO)[0], {"endpointSelector": {}, "ingress": [{"toPorts": [{"ports": [{"port": "0"}]}]}]}]
    with pytest.raises(PolicyValidationError, match=r"^\[1\]\.ingress\[0\]\.toPorts\[0\]\.ports\[0\]\.port: port 0"):
        repo.add(json.dumps(bad))
    assert repo.revision == 1 and len(repo) == 1
    with pytest.raises(PolicyValidationError):
        repo.add("not json")
    assert repo.revision == 1 and len(repo) == 1


def test_delete_by_labels() -> None:
    a = [{"endpointSelector": {}, "labels": ["k8s:app=x", "k8s:tier=1"]}]
    b = [{"endpointSelector": {}, "labels": ["k8s:app=x"]}]
    c = [{"endpointSelector": {}, "labels": ["k8s:app=y"]}]
    repo = repo_of(a, b, c)
    assert repo.revision == 3
    assert repo.delete_by_labels(["k8s:app=x", "k8s:tier=1"]) == (1, 4)
    assert repo.delete_by_labels(["k8s:app=nothing"]) == (0, 4)  # no-op keeps the revision
    assert repo.delete_by_labels(["app=x"]) == (1, 5)  # no source: any source
    assert [r.label_strings for r in repo.rules] == [("k8s:app=y",)]
    with pytest.raises(PolicyRepositoryError):
        repo.delete_by_labels([])
    assert len(repo) == 1
    assert repo.delete_all() == (1, 6)
    assert repo.delete_all() == (0, 6)


def test_repository_persistence() -> None:
    repo = repo_of(L3_DEMO, example("l3/cidr/cidr.json"))
    dump = repo.to_json()
    back = Repository.from_json(dump)
    assert back.revision == repo.revision == 2 and back.rules == repo.rules
    other = Repository()
    other.load_json(dump.encode())
    assert other.rules == repo.rules
    with pytest.raises(PolicyValidationError):
        other.load_json('{"revision": 9, "rules": [{"ingress": []}]}')
    assert other.rules == repo.rules and other.revision == 2


# ---------------------------------------------------------------------- trace


def test_trace_allowed() -> None:
    verdict, lines = trace(repo_of(L3_DEMO), APP2, APP1, 80, "TCP", IDS)
    assert verdict == "ALLOWED"
    assert lines[0] == "Tracing From: [container:id=app2] => To: [container:id=app1] Ports: [80/TCP]"
    assert "Found allow rule" in lines and "Ingress verdict: allowed" in lines
    assert lines[-1] == "Final verdict: ALLOWED"


@pytest.mark.parametrize("src,port,proto", [(APP3, 80, "TCP"), (APP2, 81, "TCP"), (APP2, 80, "UDP"), (APP2, None, "TCP"), (APP2, 80, "ANY")])
def test_trace_denied(src: list[str], port: int | None, proto: str) -> None:
    verdict, lines = trace(repo_of(L3_DEMO), src, APP1, port, proto, IDS)
    assert verdict == "DENIED"
    assert "No rule found" in lines and "Ingress verdict: denied" in lines
    assert lines[-1] == "Final verdict: DENIED"


def test_trace_no_policy_and_egress() -> None:
    verdict, lines = trace(Repository(), APP1, APP2, 80, "TCP", IDS)
    assert verdict == "ALLOWED"
    repo = repo_of([{"endpointSelector": {"matchLabels": {"id": "app1"}}, "egress": [{"toEndpoints": [{"matchLabels": {"id": "app3"}}]}]}])
    assert trace(repo, APP1, APP3, None, "ICMP", IDS)[0] == "ALLOWED"
    verdict, lines = trace(repo, APP1, APP2, 80, "TCP", IDS)
    assert verdict == "DENIED" and "Egress verdict: denied" in lines
    assert trace(repo, APP1, APP2, 80, "TCP", IDS, "never")[0] == "ALLOWED"
    assert trace(repo, APP3, APP1, 80, "TCP", IDS, "always")[0] == "DENIED"


def test_trace_requires_and_world() -> None:
    doc = [
        {"endpointSelector": {"matchLabels": {"env": "prod"}}, "ingress": [{"fromRequires": [{"matchLabels": {"env": "prod"}}]}, {"fromEntities": ["all"]}]},
    ]
    repo = repo_of(doc)
    verdict, lines = trace(repo, ["container:env=dev"], ["container:env=prod"], 80, "TCP", PROD)
    assert verdict == "DENIED" and "Ingress verdict: denied (requirements not met)" in lines
    assert trace(repo, ["container:env=prod"], ["container:env=prod"], 80, "TCP", PROD)[0] == "ALLOWED"
    world = repo_of(example("l3/entities/world.json"))
    assert trace(world, ["reserved:world"], ["container:role=public"], 443, "TCP", {})[0] == "ALLOWED"
    assert trace(world, cidr_identity_labels("8.8.8.0/24"), ["container:role=public"], 443, "TCP", {})[0] == "ALLOWED"
    assert trace(world, APP1, ["container:role=public"], 443, "TCP", IDS)[0] == "DENIED"
