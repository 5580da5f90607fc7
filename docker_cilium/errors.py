"""Errors that carry the HTTP status they are answered with.

Domain packages (ipam, endpoint, policy, identity, kvstore) raise these, so
neither they nor the two HTTP surfaces decide a status by reading message
text. The REST API (``api/errors.py``) and the Docker plugin
(``plugin/app.py``) each turn an ``APIError`` into a reply in one place; any
other exception is a bug, answered 500 and logged. Nothing here imports
aiohttp: the domain packages must not depend on the web framework. The CLI's
API client raises the same classes from the status it receives, so there is
one ``APIError`` type on both sides of the socket.
"""

from __future__ import annotations

# A message names what is wrong; past this it would only be echoing a caller's
# input back (a 1 MB ID, a 1 MB reply): the rest is cut and counted.
MAX_MESSAGE = 1024


def bounded(message: str, limit: int = MAX_MESSAGE) -> str:
    """``message`` up to ``limit`` characters, then how many more there were."""
    return message if len(message) <= limit else f"{message[:limit]}... ({len(message) - limit} more characters)"


class APIError(Exception):
    """A request that cannot be served as asked; ``status`` is its HTTP code.

    The message is shown to the user as is (the CLI, dockerd's error line),
    up to MAX_MESSAGE characters.
    ``status`` comes from the class; the constructor's ``status`` is only for
    a code without a class here (a client relaying what the server said).
    """

    status: int = 500

    def __init__(self, message: str, status: int | None = None) -> None:
        message = bounded(message)
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status


class BadRequest(APIError, ValueError):
    """The request itself is wrong (400). A ValueError too: it is bad input."""

    status = 400


class NotFound(APIError, LookupError):
    """What the request names does not exist (404)."""

    status = 404


class Conflict(APIError):
    """The request collides with current state, e.g. an address in use (409)."""

    status = 409


class PayloadTooLarge(APIError):
    """The request body is larger than the server reads (413)."""

    status = 413


class AllocationFailed(APIError):
    """A pool has nothing left to give (502, Cilium's ``IpamAllocateFailure`` code)."""

    status = 502


class Unavailable(APIError):
    """A service the agent depends on (the KV store) cannot answer now (503)."""

    status = 503


class InsufficientStorage(APIError):
    """A node-local table is full, e.g. no free endpoint ID (507)."""

    status = 507


STATUS_CLASSES: dict[int, type[APIError]] = {
    cls.status: cls
    for cls in (BadRequest, NotFound, Conflict, PayloadTooLarge, AllocationFailed, Unavailable, InsufficientStorage)
}


def error_for_status(status: int, message: str) -> APIError:
    """The error a reply with ``status`` stands for (the CLI client's side)."""
    cls = STATUS_CLASSES.get(status)
    return cls(message) if cls is not None else APIError(message, status)
