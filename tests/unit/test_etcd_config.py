"""Parsing and checking of etcd connection settings (Cilium's etcd.config file)."""

from __future__ import annotations

import pytest

from docker_cilium.kvstore import parse_options
from docker_cilium.kvstore.etcd_config import EtcdConfigError, load_etcd_config


def _file(tmp_path, text: str) -> str:
    p = tmp_path / "etcd.yaml"
    p.write_text(text)
    return str(p)


@pytest.fixture
def pem(tmp_path):
    for name in ("ca.crt", "c.crt", "c.key"):
        (tmp_path / name).write_text("x")
    return lambda name: str(tmp_path / name)


def test_cilium_style_file_with_tls_and_auth(tmp_path, pem) -> None:
    path = _file(tmp_path, f"""---
# Cilium's etcd config
endpoints:
- https://10.0.0.1:2379
- "https://10.0.0.2:2379"
trusted-ca-file: '{pem("ca.crt")}'
cert-file: {pem("c.crt")}
key-file: {pem("c.key")}
username: agent
password: "p:w #1"
""")
    cfg = load_etcd_config({"etcd.config": path})
    assert cfg.endpoints == ["10.0.0.1:2379", "10.0.0.2:2379"] and cfg.tls
    assert (cfg.ca_file, cfg.cert_file, cfg.key_file) == (pem("ca.crt"), pem("c.crt"), pem("c.key"))
    assert (cfg.username, cfg.password) == ("agent", "p:w #1")
    assert "p:w" not in repr(cfg)


def test_flow_list_and_plain_address(tmp_path) -> None:
    cfg = load_etcd_config({"etcd.config": _file(tmp_path, "endpoints: [http://a:1, b:2]\n")})
    assert cfg.endpoints == ["a:1", "b:2"] and not cfg.tls
    assert load_etcd_config({"etcd.address": "http://a:1, b:2"}).endpoints == ["a:1", "b:2"]


@pytest.mark.parametrize("opts, text, match", [
    ({"etcd.address": "https://a:2379"}, None, "trusted-ca-file"),
    ({"etcd.address": "http://a:1,https://b:2"}, None, "mix http"),
    ({"etcd.address": "a:1", "etcd.tls": "on"}, None, "etcd.tls"),
    ({}, "endpoints:\n- a:1\ninsecure-skip-tls-verify: true\n", "insecure-skip-tls-verify"),
    ({}, "endpoints:\n- a:1\nusername: u\n", "username and password"),
    ({}, "endpoints:\n- a:1\ncert-file: /x\n", "cert-file and key-file"),
    ({}, "endpoints:\n  nested: 1\n", "nested"),
    ({}, "endpoints:\n- http://a:1\ntrusted-ca-file: /etc/hostname\n", "http://"),
    ({}, "endpoints:\n- https://a:1\ntrusted-ca-file: /nonexistent/ca.crt\n", "cannot read /nonexistent"),
    ({}, "username: u\npassword: p\n", "needs endpoints"),
])
def test_refused_with_the_option_named(tmp_path, opts, text, match) -> None:
    if text is not None:
        opts = {**opts, "etcd.config": _file(tmp_path, text)}
    with pytest.raises(EtcdConfigError, match=match):
        load_etcd_config(opts)


def test_missing_file_named(tmp_path) -> None:
    with pytest.raises(EtcdConfigError, match="etcd.config .*nope.yaml"):
        load_etcd_config({"etcd.config": str(tmp_path / "nope.yaml")})


def test_kvstore_opt_address_names_several_members() -> None:
    """`--kvstore-opt etcd.address=A,B` is two members, not an option `B` without a value."""
    opts = parse_options(["etcd.address=10.0.0.2:2379,10.0.0.3:2379,lease.ttl=20", "etcd.config=/x.yaml"])
    assert opts == {"etcd.address": "10.0.0.2:2379,10.0.0.3:2379", "lease.ttl": "20", "etcd.config": "/x.yaml"}
    cfg = load_etcd_config({"etcd.address": opts["etcd.address"]})
    assert cfg.endpoints == ["10.0.0.2:2379", "10.0.0.3:2379"]
    with pytest.raises(ValueError, match="expected key=value"):
        parse_options(["10.0.0.2:2379"])
