"""The agent's etcd backend over TLS and with username/password, against real etcd.

Each module-scoped etcd is started by this test with its own ports and data
directory: one serving only TLS with client-certificate auth (CA and certs
made with the openssl CLI), one with etcd auth enabled (root user).  The
backend is built exactly as the agent builds it: ``new_backend("etcd",
--kvstore-opt pairs)`` with Cilium's ``etcd.config`` YAML file.
"""

from __future__ import annotations

import asyncio
import os
from typing import Iterator

import pytest

from docker_cilium.kvstore import EtcdConfigError, KVStoreError, new_backend
from tests.integration.etcd_proc import Cluster, start_cluster

pytestmark = pytest.mark.etcd

ROOT_PASSWORD = "s3cret-root"


@pytest.fixture(scope="module")
def tls_etcd() -> Iterator[Cluster]:
    c = start_cluster(1, tls=True)
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def auth_etcd() -> Iterator[Cluster]:
    c = start_cluster(1)
    try:
        c.etcdctl("user", "add", f"root:{ROOT_PASSWORD}", "--interactive=false")
        c.etcdctl("auth", "enable")
        yield c
    finally:
        c.stop()


def _config(tmp_path, **keys: str | list[str]) -> str:
    lines = ["---"]
    for k, v in keys.items():
        k = k.replace("_", "-")
        if isinstance(v, list):
            lines.append(f"{k}:")
            lines += [f"- {x}" for x in v]
        else:
            lines.append(f"{k}: '{v}'")
    path = os.path.join(tmp_path, "etcd.yaml")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


async def _roundtrip(opts: dict[str, str], lib_dir: str) -> bytes | None:
    b = new_backend("etcd", opts, lib_dir)
    await asyncio.wait_for(b.connect(), 30)
    try:
        await b.put("cilium/test/tls", b"ok")
        return await b.get("cilium/test/tls")
    finally:
        await b.close()


async def test_tls_with_ca_and_client_cert_connects(tls_etcd: Cluster, tmp_path) -> None:
    t = tls_etcd.tls
    assert t is not None
    cfg = _config(tmp_path, endpoints=[tls_etcd.members[0].client_url], trusted_ca_file=t.ca,
                  cert_file=t.client_cert, key_file=t.client_key)
    assert await _roundtrip({"etcd.config": cfg}, str(tmp_path)) == b"ok"


async def test_tls_server_not_signed_by_trusted_ca_fails_clearly(tls_etcd: Cluster, tmp_path) -> None:
    t = tls_etcd.tls
    assert t is not None
    cfg = _config(tmp_path, endpoints=[tls_etcd.members[0].client_url], trusted_ca_file=t.other_ca,
                  cert_file=t.client_cert, key_file=t.client_key)
    with pytest.raises(KVStoreError, match=rf"{tls_etcd.members[0].address}.*CERTIFICATE_VERIFY_FAILED"):
        await _roundtrip({"etcd.config": cfg}, str(tmp_path))


async def test_tls_without_client_cert_rejected_by_server(tls_etcd: Cluster, tmp_path) -> None:
    t = tls_etcd.tls
    assert t is not None
    cfg = _config(tmp_path, endpoints=[tls_etcd.members[0].client_url], trusted_ca_file=t.ca)
    with pytest.raises(KVStoreError, match=tls_etcd.members[0].address):
        await _roundtrip({"etcd.config": cfg}, str(tmp_path))


async def test_https_address_without_tls_settings_is_refused_not_downgraded(tls_etcd: Cluster, tmp_path) -> None:
    with pytest.raises(EtcdConfigError, match="trusted-ca-file"):
        new_backend("etcd", {"etcd.address": tls_etcd.members[0].client_url}, str(tmp_path))


async def test_auth_with_right_password_connects(auth_etcd: Cluster, tmp_path) -> None:
    cfg = _config(tmp_path, endpoints=[auth_etcd.members[0].client_url], username="root", password=ROOT_PASSWORD)
    assert await _roundtrip({"etcd.config": cfg}, str(tmp_path)) == b"ok"


async def test_auth_with_wrong_password_fails_clearly(auth_etcd: Cluster, tmp_path) -> None:
    cfg = _config(tmp_path, endpoints=[auth_etcd.members[0].client_url], username="root", password="wrong")
    with pytest.raises(KVStoreError, match="authentication failed"):
        await _roundtrip({"etcd.config": cfg}, str(tmp_path))


async def test_auth_enabled_server_refuses_client_without_credentials(auth_etcd: Cluster, tmp_path) -> None:
    with pytest.raises(KVStoreError, match=auth_etcd.members[0].address):
        await _roundtrip({"etcd.address": auth_etcd.members[0].address}, str(tmp_path))


async def test_invalid_auth_token_is_renewed(auth_etcd: Cluster, tmp_path) -> None:
    """etcd forgets simple tokens on restart and after their TTL; the backend
    must authenticate again after the first refusal, not fail forever."""
    cfg = _config(tmp_path, endpoints=[auth_etcd.members[0].client_url], username="root", password=ROOT_PASSWORD)
    b = new_backend("etcd", {"etcd.config": cfg}, str(tmp_path))
    await b.connect()
    try:
        b.client.metadata = (("token", "forgotten.by.etcd"),)  # what a restarted etcd sees
        with pytest.raises(KVStoreError):
            await b.get("cilium/test/tls")
        await b.put("cilium/test/token", b"renewed")
        assert await b.get("cilium/test/token") == b"renewed"
    finally:
        await b.close()
