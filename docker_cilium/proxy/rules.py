"""A redirect's L7 rules, compiled once, checked per request.

Semantics follow Cilium's (which hands them to Envoy as header matchers):
``method``, ``path`` and ``host`` are POSIX EREs that must match the WHOLE
value (``compile_ere`` + ``fullmatch``); an empty one matches anything.
``path`` is matched against Envoy's ``:path``: the request target as sent,
query string included (``/public`` does not allow ``/public?x=1``; a rule
wanting both says ``/public(\\?.*)?``). ``host`` is the ``Host`` header (or
the authority of an absolute-form target) as sent, port included.
``headers`` entries are ``"Name: value"`` (name case-insensitive, value
exact after trimming) or a bare ``"Name"`` (present with any value).
A request is allowed when any rule for its peer identity, or for the
wildcard peer 0, matches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from docker_cilium.policy.api.l7 import FullMatcher, PortRuleHTTP, compile_ere, parse_header


@dataclass(frozen=True)
class RequestInfo:
    """What the rules look at. Header names are lower case."""

    method: str
    path: str
    host: str
    headers: tuple[tuple[str, str], ...]

    def header_values(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n == name]


class CompiledRule:
    """One ``PortRuleHTTP`` with its regexes compiled."""

    __slots__ = ("rule", "method", "path", "host", "headers")

    def __init__(self, rule: PortRuleHTTP) -> None:
        self.rule = rule
        self.method: FullMatcher | None = compile_ere(rule.method) if rule.method else None
        self.path: FullMatcher | None = compile_ere(rule.path) if rule.path else None
        self.host: FullMatcher | None = compile_ere(rule.host) if rule.host else None
        self.headers: list[tuple[str, str | None]] = [parse_header(item) for item in rule.headers]

    def matches(self, req: RequestInfo) -> bool:
        if self.method is not None and not self.method.fullmatch(req.method):
            return False
        if self.path is not None and not self.path.fullmatch(req.path):
            return False
        if self.host is not None and not self.host.fullmatch(req.host):
            return False
        for name, value in self.headers:
            values = req.header_values(name)
            if not values or (value is not None and value not in values):
                return False
        return True


class L7Policy:
    """The rules of one redirect per peer identity (0 = any peer)."""

    def __init__(self, by_peer: Mapping[int, tuple[PortRuleHTTP, ...]]) -> None:
        self.by_peer: dict[int, tuple[CompiledRule, ...]] = {
            peer: tuple(CompiledRule(r) for r in rules) for peer, rules in by_peer.items()}

    def allows(self, peer: int, req: RequestInfo) -> bool:
        for rules in (self.by_peer.get(peer, ()), self.by_peer.get(0, ()) if peer else ()):
            for rule in rules:
                if rule.matches(req):
                    return True
        return False

    def rules_for(self, peer: int) -> list[PortRuleHTTP]:
        """The rules that apply to ``peer`` (for logs and status)."""
        return [c.rule for c in (*self.by_peer.get(peer, ()), *(self.by_peer.get(0, ()) if peer else ()))]
