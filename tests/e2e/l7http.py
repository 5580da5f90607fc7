"""HTTP server and client run inside containers' network namespaces with the
host's Python (the test image is busybox only), so that tests choose any
method, header and body and read exact statuses."""

from __future__ import annotations

import json
import subprocess
import sys
from contextlib import contextmanager
from typing import Iterator

from tests.helpers import docker, wait_until

#: Answers every method with 200 and "<METHOD> <target> from <client ip>",
#: on [::]:PORT dual-stack, HTTP/1.1 with keep-alive.
ECHO_SERVER = r'''
import socket, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def _any(self):
        n = int(self.headers.get("Content-Length") or 0)
        if n:
            self.rfile.read(n)
        body = f"{self.command} {self.path} from {self.client_address[0]}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _any
    def log_message(self, *a):
        pass

class S(ThreadingHTTPServer):
    address_family = socket.AF_INET6
    daemon_threads = True
    def server_bind(self):
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()

S(("::", int(sys.argv[1])), H).serve_forever()
'''

#: One request; prints {"status", "body"} or {"error"} as JSON.
CLIENT = r'''
import http.client, json, sys
method, host, port, path, headers, body = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], json.loads(sys.argv[5]), sys.argv[6]
try:
    c = http.client.HTTPConnection(host, port, timeout=4)
    c.request(method, path, body=body.encode() or None, headers=headers)
    r = c.getresponse()
    print(json.dumps({"status": r.status, "body": r.read().decode(errors="replace")}))
except Exception as e:
    print(json.dumps({"error": f"{type(e).__name__}: {e}"}))
'''


def pid(container: str) -> str:
    return docker("inspect", "-f", "{{.State.Pid}}", container).stdout.strip()


@contextmanager
def echo_server(container: str, port: int = 80) -> Iterator[None]:
    proc = subprocess.Popen(["nsenter", "-t", pid(container), "-n", sys.executable, "-c", ECHO_SERVER, str(port)])
    try:
        wait_until(lambda: subprocess.run(["nsenter", "-t", pid(container), "-n", "ss", "-Hltn", f"sport = :{port}"],
                                          capture_output=True, text=True).stdout.strip(),
                   what=f"echo server on {container}:{port}")
        yield
    finally:
        proc.kill()
        proc.wait()


def request(container: str | None, method: str, ip: str, path: str, port: int = 80,
            headers: dict[str, str] | None = None, body: str = "") -> dict:
    """One request from ``container``'s network namespace (None = the host's)."""
    argv = [sys.executable, "-c", CLIENT, method, ip, str(port), path, json.dumps(headers or {}), body]
    if container is not None:
        argv = ["nsenter", "-t", pid(container), "-n", *argv]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    return json.loads(out.stdout)


def allowed(res: dict) -> bool:
    return res.get("status") == 200


def denied_by_proxy(res: dict) -> bool:
    """Cilium's (Envoy's) answer to a request its rules do not allow."""
    return res.get("status") == 403 and res.get("body", "").strip() == "Access denied"
