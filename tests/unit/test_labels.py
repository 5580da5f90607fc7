"""Labels and reserved identities: pure logic, no servers."""

from __future__ import annotations

import itertools

import pytest

from docker_cilium.identity import reserved
from docker_cilium.identity.labels import Label, Labels, from_docker


def test_parse_with_and_without_source() -> None:
    assert Label.parse("container:app=web") == Label("container", "app", "web")
    assert Label.parse("app=web") == Label("unspec", "app", "web")
    assert Label.parse("reserved:host") == Label("reserved", "host", "")
    assert Label.parse("k8s:io.kubernetes.pod.namespace=default") == Label(
        "k8s", "io.kubernetes.pod.namespace", "default"
    )
    # Only the first '=' splits: values may contain '=' and ':'.
    assert Label.parse("container:url=http://x=y") == Label("container", "url", "http://x=y")
    assert str(Label.parse("container:app=web")) == "container:app=web"
    assert str(Label.parse("reserved:world")) == "reserved:world"


def test_selector_missing_source_means_any() -> None:
    sel = Label.parse_selector("app=web")
    assert sel == Label("any", "app", "web")
    assert sel.matches(Label("container", "app", "web"))
    assert sel.matches(Label("k8s", "app", "web"))
    assert not sel.matches(Label("container", "app", "db"))
    strict = Label.parse_selector("container:app=web")
    assert strict.matches(Label("container", "app", "web"))
    assert not strict.matches(Label("k8s", "app", "web"))
    # Endpoint parsing is different: a missing source is 'unspec', not 'any'.
    assert not Label.parse("app=web").matches(Label("container", "app", "web"))


def test_labels_match_selector_set() -> None:
    ep = from_docker({"app": "web", "zone": "a"})
    assert ep.matches(Labels.parse_selector(["app=web"]))
    assert ep.matches(Labels.parse_selector(["app=web", "container:zone=a"]))
    assert not ep.matches(Labels.parse_selector(["app=web", "zone=b"]))
    assert ep.matches(Labels())


@pytest.mark.parametrize("bad", ["", "=x", "container:=x", ":app=x"])
def test_parse_rejects_malformed(bad: str) -> None:
    with pytest.raises(ValueError):
        Label.parse(bad)


def test_labels_are_sorted_deduplicated_immutable_and_hashable() -> None:
    a = Labels.parse(["container:zone=a", "container:app=web", "container:app=web"])
    b = Labels.parse(["container:app=web", "container:zone=a"])
    assert a == b and hash(a) == hash(b) and len(a) == 2
    assert a.to_strings() == ["container:app=web", "container:zone=a"]
    assert {a: 1}[b] == 1
    assert Label("container", "app", "web") in a
    assert a.get("zone") == Label("container", "zone", "a")
    with pytest.raises(AttributeError):
        a.foo = 1  # type: ignore[attr-defined]


def test_sorted_key_format_and_order_independence() -> None:
    for perm in itertools.permutations([("id", "app1"), ("zone", "a"), ("tier", "")]):
        assert from_docker(dict(perm)).sorted_key() == "container:id=app1;container:tier=;container:zone=a;"


def test_from_docker_maps_to_container_source_verbatim() -> None:
    lbls = from_docker({"com.example.team": "blue", "reserved:host": "", "app": "web"})
    assert {lbl.source for lbl in lbls} == {"container"}
    # A container cannot claim reserved labels by naming a key "reserved:...".
    assert Label("container", "reserved:host", "") in lbls
    assert reserved.lookup(lbls) is None
    assert from_docker({}) == Labels() and from_docker(None) == Labels()


@pytest.mark.parametrize(
    "labels",
    [
        {"a": "b;container:c=d"},
        {"a": "b", "c": "d"},
        {"a;": "x"},
        {"a=b": "c"},
        {"a": "b\\"},
        {"x/y": "1/2"},
        {"k": ""},
        {},
    ],
)
def test_sorted_key_roundtrip(labels: dict[str, str]) -> None:
    lbls = from_docker(labels)
    assert Labels.from_sorted_key(lbls.sorted_key()) == lbls


def test_sorted_key_is_unambiguous() -> None:
    """Values containing delimiters must not collide with other label sets."""
    tricky = [
        {"a": "b;container:c=d"},
        {"a": "b", "c": "d"},
        {"a": "b;"},
        {"a": "b\\", "c": "d"},
        {"a=b": "c"},
        {"a": "b=c"},
        {"a": "b"},
        {"a": "bc"},
        {"ab": "c"},
    ]
    keys = [from_docker(t).sorted_key() for t in tricky]
    assert len(set(keys)) == len(keys)
    # Exactness, not prefix: {a=b} is a prefix of {a=b, c=d} as text.
    assert from_docker({"a": "b", "c": "d"}).sorted_key().startswith(from_docker({"a": "b"}).sorted_key())


@pytest.mark.parametrize("bad", ["container:a=b", "container:a", "container:a=b;x", "nosep;", "a\\"])
def test_from_sorted_key_rejects_garbage(bad: str) -> None:
    with pytest.raises(ValueError):
        Labels.from_sorted_key(bad)


def test_reserved_identities_both_ways() -> None:
    expected = {"host": 1, "world": 2, "unmanaged": 3, "health": 4, "init": 5, "remote-node": 6}
    for name, num in expected.items():
        lbls = reserved.labels_for(num)
        assert lbls == Labels([Label("reserved", name)])
        assert lbls.sorted_key() == f"reserved:{name}=;"
        assert reserved.lookup(lbls) == num
        assert reserved.number_of(name) == num == reserved.number_of(f"reserved:{name}")
        assert reserved.name_of(num) == name
        assert reserved.is_reserved(num)
    assert reserved.labels_for(7) is None and reserved.lookup(Labels()) is None
    # Extra labels make it a normal (allocated) label set.
    assert reserved.lookup(Labels.parse(["reserved:host", "container:a=b"])) is None
    assert reserved.MIN_ALLOCATED == 256 and reserved.MAX == 65535
    assert not reserved.is_reserved(256)
    assert set(reserved.all_reserved()) == {1, 2, 3, 4, 5, 6}
