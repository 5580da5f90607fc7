"""Errors raised while validating user policy.

A single exception type carries the JSON path of the offending field, so the
agent, the API and the CLI can all show users *where* their policy is wrong
(``[0].ingress[1].toPorts[0].ports[0].port: port 0 is out of range 1-65535``)
instead of a bare "invalid policy".
"""

from __future__ import annotations

from docker_cilium.errors import BadRequest


class PolicyValidationError(BadRequest):
    """A policy document (or part of it) is invalid.

    ``path`` is the JSON path of the bad element (``""`` for the document
    itself); ``reason`` says why. ``str(err)`` is ``"<path>: <reason>"``.
    """

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}" if path else reason)
