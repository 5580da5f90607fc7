"""A small synchronous client for the agent API over its Unix socket.

The CLI makes one or two requests per run; a blocking http.client connection
starts faster than an event loop plus aiohttp and needs nothing extra.
"""

from __future__ import annotations

import http.client
import json
import socket
from typing import Any, Iterator
from urllib.parse import quote, urlencode

from docker_cilium import defaults
from docker_cilium.errors import APIError, Unavailable, error_for_status

__all__ = ["APIError", "Client"]


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float | None) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.unix_path)
        self.sock = sock


class Client:
    def __init__(self, host: str = defaults.API_SOCKET, timeout: float = 30.0) -> None:
        self.path = host[len("unix://"):] if host.startswith("unix://") else host
        self.timeout = timeout

    def request(self, method: str, path: str, body: Any = None, raw: bytes | None = None,
                query: dict[str, str] | None = None) -> Any:
        if query:
            path += "?" + "&".join(f"{quote(k)}={quote(str(v))}" for k, v in query.items())
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        conn = _UnixConnection(self.path, self.timeout)
        try:
            try:
                conn.request(method, "/v1" + path, body=data,
                             headers={"Content-Type": "application/json"} if data is not None else {})
            except OSError as exc:
                raise self.unreachable(exc) from None
            try:
                resp = conn.getresponse()
                payload = resp.read()
            except (OSError, http.client.HTTPException) as exc:
                raise Unavailable(f"the cilium agent did not answer {method} /v1{path}: "
                                  f"{_reason(exc)} (socket {self.path})") from None
        finally:
            conn.close()
        try:
            decoded = json.loads(payload) if payload else None
        except ValueError:
            decoded = payload.decode(errors="replace")
        if resp.status >= 400:
            msg = decoded.get("message") if isinstance(decoded, dict) else decoded
            raise error_for_status(resp.status, f"{msg} ({resp.status})")
        return decoded

    def get(self, path: str, **kw: Any) -> Any:
        return self.request("GET", path, **kw)

    def stream(self, path: str, query: list[tuple[str, str]]) -> Iterator[bytes]:
        """GET a streaming endpoint (NDJSON) and yield its lines as they come;
        no timeout: a quiet stream is not an error."""
        conn = _UnixConnection(self.path, None)
        try:
            try:
                conn.request("GET", "/v1" + path + ("?" + urlencode(query) if query else ""))
            except OSError as exc:
                raise self.unreachable(exc) from None
            resp = conn.getresponse()
            if resp.status >= 400:
                payload = resp.read()
                try:
                    msg = json.loads(payload).get("message", payload.decode(errors="replace"))
                except (ValueError, AttributeError):
                    msg = payload.decode(errors="replace")
                raise error_for_status(resp.status, f"{msg} ({resp.status})")
            while line := resp.readline():
                yield line
        finally:
            conn.close()

    def unreachable(self, exc: OSError) -> Unavailable:
        """The one line every verb prints when it cannot connect to the agent."""
        if isinstance(exc, PermissionError):
            return Unavailable(f"cannot reach the cilium agent: permission denied (socket {self.path}): "
                               "run as root or as a member of the socket's group")
        return Unavailable(f"cannot reach the cilium agent: {_reason(exc)}: is the agent running? "
                           f"(socket {self.path})")


def _reason(exc: BaseException) -> str:
    """``strerror`` for OS errors (no errno numbers), the message otherwise."""
    if isinstance(exc, TimeoutError):
        return "timed out"
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
