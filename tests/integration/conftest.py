"""Fixtures that run the integration suites against REAL stores.

``etcd_server`` starts an actual etcd (the Debian package's /usr/bin/etcd);
it fails rather than skips when etcd is missing, because a skipped etcd
suite would let a broken etcd backend look green.

``backend`` / ``backend_factory`` are parametrized over both backend kinds
so that every test written once runs against SQLite and etcd.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from typing import AsyncIterator, Awaitable, Callable, Iterator

import pytest

from docker_cilium.kvstore import Backend
from docker_cilium.kvstore.etcd import EtcdBackend
from docker_cilium.kvstore.sqlite import SQLiteBackend

ETCD_BIN = os.environ.get("ETCD_BIN", "/usr/bin/etcd")
ETCD_START_TIMEOUT_S = 30.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _etcd_healthy(client_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{client_url}/health", timeout=1) as r:
            return b'"health":"true"' in r.read()
    except OSError:
        return False


@pytest.fixture(scope="session")
def etcd_server() -> Iterator[str]:
    """A throw-away single-member etcd; yields ``"127.0.0.1:PORT"``."""
    if not (os.path.isfile(ETCD_BIN) and os.access(ETCD_BIN, os.X_OK)):
        pytest.fail(
            f"etcd binary not found at {ETCD_BIN}: install it (apt-get install etcd-server) "
            "or set ETCD_BIN; etcd tests must not be skipped",
            pytrace=False,
        )
    data_dir = tempfile.mkdtemp(prefix="docker-cilium-etcd-")
    log_path = os.path.join(data_dir, "etcd.log")
    proc: subprocess.Popen[bytes] | None = None
    try:
        # Free ports can be taken between probing and etcd binding them:
        # retry a few times with new ports.
        for attempt in range(3):
            client_port, peer_port = _free_port(), _free_port()
            client_url = f"http://127.0.0.1:{client_port}"
            peer_url = f"http://127.0.0.1:{peer_port}"
            member_dir = os.path.join(data_dir, f"member-{attempt}")
            cmd = [
                ETCD_BIN,
                "--name", "test",
                "--data-dir", member_dir,
                "--listen-client-urls", client_url,
                "--advertise-client-urls", client_url,
                "--listen-peer-urls", peer_url,
                "--initial-advertise-peer-urls", peer_url,
                "--initial-cluster", f"test={peer_url}",
                "--initial-cluster-state", "new",
                "--initial-cluster-token", f"docker-cilium-test-{os.getpid()}",
                # Fast lease expiry checks for the TTL tests.
                "--heartbeat-interval", "100",
                "--election-timeout", "1000",
            ]
            with open(log_path, "ab") as logf:
                proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT)
            deadline = time.monotonic() + ETCD_START_TIMEOUT_S
            while time.monotonic() < deadline and proc.poll() is None:
                if _etcd_healthy(client_url):
                    break
                time.sleep(0.1)
            if proc.poll() is None and _etcd_healthy(client_url):
                break
            proc.kill()
            proc.wait()
            proc = None
        if proc is None:
            with open(log_path, "rb") as f:
                tail = f.read()[-3000:].decode(errors="replace")
            pytest.fail(f"etcd did not become healthy; log tail:\n{tail}", pytrace=False)
        yield f"127.0.0.1:{client_port}"
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(data_dir, ignore_errors=True)


BACKEND_KINDS = [
    pytest.param("local", id="local"),
    pytest.param("etcd", id="etcd", marks=pytest.mark.etcd),
]

BackendFactory = Callable[..., Awaitable[Backend]]


@pytest.fixture(params=BACKEND_KINDS)
def backend_kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
async def backend_factory(
    backend_kind: str, request: pytest.FixtureRequest, tmp_path
) -> AsyncIterator[BackendFactory]:
    """``await make(lease_ttl=...)`` -> another connected client of ONE store.

    Every client made in a test talks to the same store (same SQLite file /
    same etcd), which is what multi-agent tests need.  For etcd the whole
    keyspace is wiped before the test: the server is shared by the session
    and the identity allocator uses fixed ``cilium/...`` keys, so per-test
    key prefixes cannot isolate tests (they run sequentially).
    """
    made: list[Backend] = []
    etcd_addr = request.getfixturevalue("etcd_server") if backend_kind == "etcd" else None
    db_path = str(tmp_path / "kvstore.db")

    async def make(lease_ttl: float = 15) -> Backend:
        if backend_kind == "etcd":
            b: Backend = EtcdBackend([etcd_addr], lease_ttl=int(lease_ttl))  # type: ignore[list-item]
        else:
            b = SQLiteBackend(db_path, lease_ttl=lease_ttl)
        await b.connect()
        made.append(b)
        return b

    if backend_kind == "etcd":
        wiper = await make()
        await wiper.delete_prefix("")
    try:
        yield make
    finally:
        for b in made:
            try:
                await b.close()
            except Exception:
                pass


@pytest.fixture
async def backend(backend_factory: BackendFactory) -> Backend:
    """One connected client; closed by ``backend_factory``'s teardown."""
    return await backend_factory()
