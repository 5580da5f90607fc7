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
                raise self._gone("did not answer", f"{method} /v1{path}", exc) from None
        finally:
            conn.close()
        decoded = _decode(payload)
        if resp.status >= 400:
            raise _error(resp.status, decoded)
        return decoded

    def get(self, path: str, **kw: Any) -> Any:
        return self.request("GET", path, **kw)

    def stream(self, path: str, query: list[tuple[str, str]]) -> Iterator[bytes]:
        """GET an endless streaming endpoint (NDJSON) and yield its lines as they
        come; no timeout: a quiet stream is not an error. The agent ends such a
        stream only when it goes away (stopped, killed, restarted): that end,
        clean or cut, raises :class:`Unavailable` after the lines that came."""
        conn = _UnixConnection(self.path, None)
        what = f"GET /v1{path}"
        try:
            try:
                conn.request("GET", "/v1" + path + ("?" + urlencode(query) if query else ""))
            except OSError as exc:
                raise self.unreachable(exc) from None
            try:
                resp = conn.getresponse()
            except (OSError, http.client.HTTPException) as exc:
                raise self._gone("did not answer", what, exc) from None
            if resp.status >= 400:
                raise _error(resp.status, _decode(resp.read()))
            try:
                while line := resp.readline():
                    yield line
            except (OSError, http.client.HTTPException) as exc:
                raise self._gone("ended the stream", what, exc) from None
            raise self._gone("ended the stream", what, None)
        finally:
            conn.close()

    def _gone(self, what: str, request: str, exc: BaseException | None) -> Unavailable:
        """The agent went away after the connection: ``exc`` None is a clean close."""
        reason = _reason(exc) if exc is not None else "connection closed"
        return Unavailable(f"the cilium agent {what} {request}: {reason} (socket {self.path})")

    def unreachable(self, exc: OSError) -> Unavailable:
        """The one line every verb prints when it cannot connect to the agent."""
        if isinstance(exc, PermissionError):
            return Unavailable(f"cannot reach the cilium agent: permission denied (socket {self.path}): "
                               "run as root or as a member of the socket's group")
        return Unavailable(f"cannot reach the cilium agent: {_reason(exc)}: is the agent running? "
                           f"(socket {self.path})")


def _decode(payload: bytes) -> Any:
    """A reply body: its JSON, else its text (None when empty)."""
    try:
        return json.loads(payload) if payload else None
    except ValueError:
        return payload.decode(errors="replace")


def _error(status: int, decoded: Any) -> APIError:
    """An error reply as the error its status means, with the agent's message."""
    msg = decoded.get("message", json.dumps(decoded)) if isinstance(decoded, dict) else decoded
    return error_for_status(status, f"{msg} ({status})")


def _reason(exc: BaseException) -> str:
    """``strerror`` for OS errors (no errno numbers), the message otherwise."""
    if isinstance(exc, TimeoutError):
        return "timed out"
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
