"""Start throw-away etcd members (one or a cluster, plain or TLS) owned by a test.

Each member gets its own ports and data directory; nothing here touches
the machine's shared etcd on 127.0.0.1:2379, so a test may pause or kill
its members freely.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field

import pytest

ETCD_BIN = os.environ.get("ETCD_BIN", "/usr/bin/etcd")
ETCDCTL_BIN = os.environ.get("ETCDCTL_BIN", "/usr/bin/etcdctl")
ETCD_START_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class TLSFiles:
    """PEM files made by make_certs()."""

    ca: str
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str
    other_ca: str  # a CA that signed nothing the server uses


@dataclass
class Member:
    name: str
    client_url: str
    peer_url: str
    proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return self.client_url.split("://", 1)[1]

    def pause(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)


@dataclass
class Cluster:
    members: list[Member]
    data_dir: str
    tls: TLSFiles | None = None
    log_path: str = ""
    _extra: list[str] = field(default_factory=list)

    def etcdctl(self, *args: str, user: str | None = None) -> str:
        cmd = [ETCDCTL_BIN, "--endpoints", self.members[0].client_url, "--dial-timeout", "5s"]
        if self.tls is not None:
            cmd += ["--cacert", self.tls.ca, "--cert", self.tls.client_cert, "--key", self.tls.client_key]
        if user:
            cmd += ["--user", user]
        r = subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=30,
                           env={**os.environ, "ETCDCTL_API": "3"})
        if r.returncode != 0:
            raise RuntimeError(f"etcdctl {' '.join(args)} failed: {r.stderr.strip()}")
        return r.stdout

    def stop(self) -> None:
        for m in self.members:
            if m.proc is None:
                continue
            _resume_quietly(m)
            m.proc.terminate()
            try:
                m.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                m.proc.kill()
                m.proc.wait()
            m.proc = None
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def log_tail(self) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return f.read()[-3000:].decode(errors="replace")
        except OSError:
            return ""


def _resume_quietly(m: Member) -> None:
    """A paused member ignores SIGTERM until continued."""
    try:
        m.resume()
    except (ProcessLookupError, AssertionError):
        pass


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _healthy(m: Member, tls: TLSFiles | None) -> bool:
    ctx = None
    if tls is not None:
        ctx = ssl.create_default_context(cafile=tls.ca)
        ctx.load_cert_chain(tls.client_cert, tls.client_key)
    try:
        with urllib.request.urlopen(f"{m.client_url}/health", timeout=1, context=ctx) as r:
            return b'"health":"true"' in r.read()
    except OSError:
        return False


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=30)


def make_certs(d: str) -> TLSFiles:
    """A CA, a server cert for 127.0.0.1, a client cert, and an unrelated CA (openssl CLI)."""
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    p = lambda name: os.path.join(d, name)  # noqa: E731
    for ca in ("ca", "other-ca"):
        _openssl("req", "-x509", *ec, "-keyout", p(f"{ca}.key"), "-out", p(f"{ca}.crt"), "-days", "2",
                 "-subj", f"/CN=docker-cilium test {ca}",
                 "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign")
    for who, ext in (("server", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"),
                     ("client", "extendedKeyUsage=clientAuth\n")):
        with open(p(f"{who}.ext"), "w") as f:
            f.write(ext)
        _openssl("req", *ec, "-keyout", p(f"{who}.key"), "-out", p(f"{who}.csr"), "-subj", f"/CN={who}")
        _openssl("x509", "-req", "-in", p(f"{who}.csr"), "-CA", p("ca.crt"), "-CAkey", p("ca.key"),
                 "-CAcreateserial", "-out", p(f"{who}.crt"), "-days", "2", "-extfile", p(f"{who}.ext"))
    return TLSFiles(ca=p("ca.crt"), server_cert=p("server.crt"), server_key=p("server.key"),
                    client_cert=p("client.crt"), client_key=p("client.key"), other_ca=p("other-ca.crt"))


def start_cluster(size: int = 1, *, tls: bool = False) -> Cluster:
    """Start ``size`` members forming one cluster; fails (never skips) without etcd."""
    if not (os.path.isfile(ETCD_BIN) and os.access(ETCD_BIN, os.X_OK)):
        pytest.fail(
            f"etcd binary not found at {ETCD_BIN}: install it (apt-get install etcd-server) "
            "or set ETCD_BIN; etcd tests must not be skipped",
            pytrace=False,
        )
    data_dir = tempfile.mkdtemp(prefix="docker-cilium-etcd-")
    files = make_certs(data_dir) if tls else None
    cluster = Cluster(members=[], data_dir=data_dir, tls=files, log_path=os.path.join(data_dir, "etcd.log"))
    scheme = "https" if tls else "http"
    # Free ports can be taken between probing and etcd binding them: retry.
    for attempt in range(3):
        cluster.members = [
            Member(f"m{i}", f"{scheme}://127.0.0.1:{_free_port()}", f"http://127.0.0.1:{_free_port()}")
            for i in range(size)
        ]
        initial = ",".join(f"{m.name}={m.peer_url}" for m in cluster.members)
        for m in cluster.members:
            cmd = [
                ETCD_BIN, "--name", m.name,
                "--data-dir", os.path.join(data_dir, f"{m.name}-{attempt}"),
                "--listen-client-urls", m.client_url, "--advertise-client-urls", m.client_url,
                "--listen-peer-urls", m.peer_url, "--initial-advertise-peer-urls", m.peer_url,
                "--initial-cluster", initial, "--initial-cluster-state", "new",
                "--initial-cluster-token", f"docker-cilium-test-{os.getpid()}-{attempt}",
                # Fast elections and lease expiry checks for the TTL tests.
                "--heartbeat-interval", "100", "--election-timeout", "1000",
            ]
            if files is not None:
                cmd += ["--trusted-ca-file", files.ca, "--cert-file", files.server_cert,
                        "--key-file", files.server_key, "--client-cert-auth"]
            with open(cluster.log_path, "ab") as logf:
                m.proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + ETCD_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if any(m.proc.poll() is not None for m in cluster.members):  # type: ignore[union-attr]
                break
            if all(_healthy(m, files) for m in cluster.members):
                return cluster
            time.sleep(0.1)
        tail = cluster.log_tail()
        for m in cluster.members:
            if m.proc is not None:
                m.proc.kill()
                m.proc.wait()
                m.proc = None
    shutil.rmtree(data_dir, ignore_errors=True)
    pytest.fail(f"etcd did not become healthy; log tail:\n{tail}", pytrace=False)
