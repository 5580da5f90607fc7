"""HTTP/1.1 messages as the proxy sees them: httptools (llhttp) callbacks
collected into ordered events (a head, body pieces, ``END``) that the
connection acts on after each ``feed_data``; the parsed request with the
values the rules look at."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import httptools

from docker_cilium.proxy.rules import RequestInfo

END = object()  # end of a message, in a sink's event list

_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_HEX = frozenset("0123456789abcdefABCDEF")


def remove_dot_segments(path: str) -> str:
    """RFC 3986 5.2.4."""
    out: list[str] = []
    while path:
        if path.startswith("../"):
            path = path[3:]
        elif path.startswith("./"):
            path = path[2:]
        elif path.startswith("/./"):
            path = path[2:]
        elif path == "/.":
            path = "/"
        elif path.startswith("/../") or path == "/..":
            path = "/" + path[4:] if path.startswith("/../") else "/"
            if out:
                out.pop()
        elif path in (".", ".."):
            path = ""
        else:
            end = path.find("/", 1 if path.startswith("/") else 0)
            end = len(path) if end < 0 else end
            out.append(path[:end])
            path = path[end:]
    return "".join(out)


def normalize_path(path: str) -> str:
    """RFC 3986 6.2.2 syntax-based normalization of a request path, as
    Envoy's ``normalize_path``: percent-encoded
    unreserved characters decoded, other percent-encodings upper-cased, dot
    segments removed. Without it a rule ``/public/.*`` would allow
    ``/public/../private`` (or ``/public/%2e%2e/private``), which the server
    resolves to ``/private``."""
    chars: list[str] = []
    i = 0
    while i < len(path):
        c = path[i]
        if c == "%" and i + 2 < len(path) and path[i + 1] in _HEX and path[i + 2] in _HEX:
            ch = chr(int(path[i + 1:i + 3], 16))
            chars.append(ch if ch in _UNRESERVED else "%" + path[i + 1:i + 3].upper())
            i += 3
        else:
            chars.append(c)
            i += 1
    return remove_dot_segments("".join(chars))


@dataclass
class Request:
    method: str
    target: str
    version: str
    headers: list[tuple[bytes, bytes]]
    keep_alive: bool
    upgrade: bool
    chunked: bool
    info: RequestInfo = field(init=False)

    def __post_init__(self) -> None:
        host = b""
        for name, value in self.headers:
            if name.lower() == b"host":
                host = value
                break
        if self.target.startswith("/"):  # origin-form: checked and forwarded normalized
            raw_path, sep, query = self.target.partition("?")
            self.target = normalize_path(raw_path) + sep + query
        path = self.target
        if "://" in self.target:  # absolute-form: the authority and path come from the target
            url = httptools.parse_url(self.target.encode())
            host = url.host + (b":%d" % url.port if url.port else b"")
            path = (url.path or b"/").decode("latin-1") + (
                "?" + url.query.decode("latin-1") if url.query else "")
        self.info = RequestInfo(self.method, path, host.decode("latin-1").strip(), tuple(
            (n.decode("latin-1").lower(), v.decode("latin-1").strip()) for n, v in self.headers))

    def head(self) -> bytes:
        lines = [f"{self.method} {self.target} HTTP/{self.version}\r\n".encode("latin-1")]
        lines += [n + b": " + v + b"\r\n" for n, v in self.headers]
        return b"".join(lines) + b"\r\n"


def is_chunked(headers: list[tuple[bytes, bytes]]) -> bool:
    for name, value in headers:
        if name.lower() == b"transfer-encoding" and value.lower().rstrip().endswith(b"chunked"):
            return True
    return False


class Sink:
    """httptools callbacks -> an ordered list of events: the head, body bytes, END."""

    def __init__(self) -> None:
        self.events: list[object] = []
        self._headers: list[tuple[bytes, bytes]] = []

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((bytes(name), bytes(value)))

    def on_body(self, body: bytes) -> None:
        self.events.append(bytes(body))

    def on_message_complete(self) -> None:
        self.events.append(END)

    def take(self) -> list[object]:
        out, self.events = self.events, []
        return out


class RequestSink(Sink):
    """A client's requests: Request, then its body bytes, then END."""

    def __init__(self) -> None:
        super().__init__()
        self.parser = httptools.HttpRequestParser(self)
        self.in_head = False
        self.head_started = 0.0
        self.head_bytes = 0       # URL and complete headers of the current head
        self.raw_head_bytes = 0   # bytes read while a head was incomplete (bounds a never-ending header)
        self._target = bytearray()

    def on_message_begin(self) -> None:
        self.in_head, self.head_started = True, time.monotonic()
        self.head_bytes = self.raw_head_bytes = 0
        self._target, self._headers = bytearray(), []

    def on_url(self, url: bytes) -> None:
        self._target += url
        self.head_bytes += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        super().on_header(name, value)
        self.head_bytes += len(name) + len(value) + 4

    def on_headers_complete(self) -> None:
        self.in_head = False
        p = self.parser
        method = p.get_method().decode("latin-1")
        self.events.append(Request(method, self._target.decode("latin-1"), p.get_http_version(), self._headers,
                                   p.should_keep_alive(), p.should_upgrade() or method == "CONNECT",
                                   is_chunked(self._headers)))


class ResponseSink(Sink):
    """One request's response(s) (1xx first, then the final one): a
    (status, version, reason, headers, keep-alive) tuple, body bytes, END."""

    def __init__(self) -> None:
        super().__init__()
        self.parser = httptools.HttpResponseParser(self)
        self._reason = bytearray()

    def on_message_begin(self) -> None:
        self._reason, self._headers = bytearray(), []

    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_headers_complete(self) -> None:
        p = self.parser
        self.events.append((p.get_status_code(), p.get_http_version(), bytes(self._reason), self._headers,
                            p.should_keep_alive()))
