"""Policy resolution: from the repository to what the datapath enforces for
ONE endpoint, plus ``policy trace``.

Semantics (Cilium's, 1.0-1.5 era)
---------------------------------
* Whitelist: the union of every entry of every rule whose ``endpointSelector``
  selects the endpoint.
* Enforcement per direction: in ``default`` mode a direction is enforced as soon
  as one selecting rule has a non-empty section for it — even ``egress: [{}]``,
  which allows nothing and therefore means "deny all egress". (``egress: []`` is
  the same as no section, as with Go's ``len()``.) ``always`` enforces both
  directions on every endpoint, ``never`` none. An unenforced direction has no
  entries: the datapath lets everything through.
* An entry = L3 peers AND L4 ports:
  - peers and ``toPorts``          -> (identity, port, proto) for each pair;
  - peers, no ``toPorts``          -> (identity, 0, 0): all ports and ICMP;
  - ``toPorts``, no peers          -> (0, port, proto): any peer on the port;
  - neither (``{}`` or requires only) -> nothing.
  Protocol ANY becomes a TCP and a UDP entry.
* ``fromRequires``/``toRequires``: the requirements of ALL selecting rules in
  that direction must hold for every allowed peer. When there are any, a
  wildcard peer (0) is expanded into the explicit identities of ``identities``
  that satisfy them, and named peers that do not satisfy them are dropped.
* Endpoint selectors (``fromEndpoints``) select *cluster* identities: identities
  labelled ``reserved:world`` (world and CIDR identities) are only selected by a
  selector that explicitly names a ``reserved:`` or ``cidr:`` key. Thus
  ``fromEndpoints: [{}]`` means "all cluster endpoints" (including host, init,
  health), never the outside world.
* Entities: ``world`` = ``reserved:world`` = identity 2 and every CIDR identity;
  ``cluster`` = every identity that is not world; ``host`` = 1; ``init`` = 5;
  ``all`` = the wildcard identity 0 (unless requirements force expansion).

CIDR identities
---------------
The agent gives every prefix P returned by :func:`cidr_prefixes` a local CIDR
identity whose labels are :func:`cidr_identity_labels(P)`: ``cidr:Q`` for EVERY
prefix Q containing P (P itself down to ``0.0.0.0/0`` or ``::/0``) plus
``reserved:world``, and installs P -> identity in its LPM ipcache. A CIDR rule
"C except E1..En" is turned into the prefixes covering C minus the excepts
(address-range subtraction) and selects the identities that carry ``cidr:S``
for one of those prefixes S. Because an identity carries the labels of all its
supernets, a rule for 10.0.0.0/8 still selects the identity of 10.1.0.0/16
when another rule made the agent install that longer prefix. The except
prefixes are installed as well: otherwise the LPM lookup of an address inside
an except would fall back to a wider, allowed prefix. An endpoint's own
address keeps its label identity (the agent installs /32s for endpoints), so
CIDR rules never select endpoints. The reserved world identity 2 (addresses
with no installed prefix) does not carry ``cidr:`` labels; it is selected by
``world``/``all`` only — a rule for ``0.0.0.0/0`` gets its own /0 identity.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Generator, Iterable, Mapping

from docker_cilium.errors import BadRequest
from docker_cilium import u8proto
from docker_cilium.identity import reserved
from docker_cilium.identity.reserved import HOST_LABEL, WORLD_LABEL
from docker_cilium.u8proto import PROTO_NAMES

from .api.cidr import cidr_identity_labels, cidr_label
from .api.entities import entity_matches
from .api.l4 import PROTO_NUMBERS
from .api.l7 import PortRuleHTTP
from .api.rule import PeerRule, Rule
from . import l7merge
from .api.selector import EndpointSelector, LabelSet
from .index import IdentityIndex
from .turns import Turns
from .repository import Repository, rule_prefixes

__all__ = [
    "DIRECTIONS",
    "ENFORCEMENT_MODES",
    "parse_enforcement",
    "EndpointPolicy",
    "PolicyEntry",
    "RESERVED_IDENTITIES",
    "WILDCARD_IDENTITY",
    "cidr_identity_labels",
    "cidr_prefixes",
    "resolve",
    "resolve_steps",
    "selecting_rules",
    "trace",
]

WILDCARD_IDENTITY = 0
HOST_IDENTITY = reserved.HOST
WORLD_IDENTITY = reserved.WORLD
INIT_IDENTITY = reserved.INIT

#: Labels of the reserved identities (from the one table in identity.reserved);
#: merged into every identity table so entities and ``reserved:`` selectors
#: work even if the caller omits them.
RESERVED_IDENTITIES: Mapping[int, frozenset[str]] = {
    num: frozenset(labels.to_strings()) for num, labels in reserved.all_reserved().items()
}

DIRECTIONS = ("ingress", "egress")
ENFORCEMENT_MODES = ("default", "always", "never")


@dataclass(frozen=True, order=True)
class PolicyEntry:
    """One policy-map entry. ``identity`` 0 = any peer, ``port``/``proto`` 0 =
    any port and protocol (including ICMP). ``l7``: None = plain allow, else
    the connections this entry allows go through the L7 proxy, which allows
    only these requests; ``proxy_port`` is the redirect's listener, set by
    regeneration (0 = plain allow)."""

    direction: str
    identity: int
    port: int = 0
    proto: int = 0
    proxy_port: int = 0
    l7: tuple[PortRuleHTTP, ...] | None = None

    def __str__(self) -> str:
        port = "ANY" if self.port == 0 and self.proto == 0 else f"{self.port}/{PROTO_NAMES.get(self.proto, self.proto)}"
        return f"{self.direction} {self.identity} {port}"


@dataclass(frozen=True)
class EndpointPolicy:
    """What the datapath must enforce for one endpoint."""

    ingress_enforced: bool
    egress_enforced: bool
    entries: frozenset[PolicyEntry]
    revision: int


# ---------------------------------------------------------------------------
# peer matching (shared by resolve and trace)

Matcher = Callable[[LabelSet], bool]


def endpoint_selector_selects(selector: EndpointSelector, labels: LabelSet) -> bool:
    """A peer endpoint selector: cluster identities only, unless the selector
    names ``reserved:``/``cidr:`` keys itself (see module docstring)."""
    if WORLD_LABEL in labels.strings and not selector.names_source("reserved", "cidr"):
        return False
    return selector.matches(labels)


def peer_matcher(entry: PeerRule) -> Matcher | None:
    """Matcher for the entry's L3 peers; None means "any peer" (wildcard)."""
    if entry.allows_all_peers:
        return None
    if entry.endpoints:
        sels = entry.endpoints
        return lambda ls: any(endpoint_selector_selects(s, ls) for s in sels)
    if entry.entities:
        ents = entry.entities
        return lambda ls: any(entity_matches(e, ls) for e in ents)
    wanted = frozenset(cidr_label(n) for n in entry.cidr_prefixes())
    return lambda ls: not wanted.isdisjoint(ls.strings)


def _is_effective(entry: PeerRule) -> bool:
    """``{}`` and requires-only entries allow nothing."""
    return entry.has_l3 or bool(entry.to_ports)


def selecting_rules(repo: Repository | Iterable[Rule], endpoint_labels: LabelSet | Iterable[str]) -> list[Rule]:
    ls = LabelSet.of(endpoint_labels)
    rules = repo.rules if isinstance(repo, Repository) else tuple(repo)
    return [r for r in rules if r.endpoint_selector.matches(ls)]


def parse_enforcement(value: object, field: str = "PolicyEnforcement") -> str:
    """The one check of an enforcement mode (flags, API, CLI all end here).

    Case-insensitive; the error names the field, as the API reports it."""
    if not isinstance(value, str) or value.lower() not in ENFORCEMENT_MODES:
        raise BadRequest(f"invalid value {value!r} for {field}: must be one of {', '.join(ENFORCEMENT_MODES)}")
    return value.lower()


def _enforced(mode: str, rules: list[Rule], direction: str) -> bool:
    mode = parse_enforcement(mode)
    if mode == "always":
        return True
    if mode == "never":
        return False
    return any(r.section(direction) for r in rules)


def identity_table(identities: Mapping[int, Iterable[str]]) -> dict[int, LabelSet]:
    """Caller's identities (labels as strings) plus the reserved ones."""
    table = {i: LabelSet.of(lbls) for i, lbls in RESERVED_IDENTITIES.items()}
    for ident, lbls in identities.items():
        if int(ident) != WILDCARD_IDENTITY:
            table[int(ident)] = LabelSet.of(lbls)
    return table


def identity_index(identities: Mapping[int, Iterable[str]]) -> IdentityIndex:
    """The index over ``identities``, built once per snapshot that can keep it
    (``IdentitySnapshot.index``), so every endpoint resolved against the same
    snapshot shares it."""
    idx = getattr(identities, "index", None)
    if isinstance(idx, IdentityIndex):
        return idx
    idx = IdentityIndex(identities, RESERVED_IDENTITIES)
    if hasattr(identities, "index"):
        identities.index = idx  # type: ignore[attr-defined]
    return idx


async def build_identity_index(identities: Mapping[int, Iterable[str]], turns: Turns) -> IdentityIndex:
    """:func:`identity_index`, built with loop turns (thousands of new CIDR
    identities take a while) and kept on the snapshot."""
    idx = IdentityIndex(identities, RESERVED_IDENTITIES, lazy=True)
    await turns.drive(idx.pending)
    if hasattr(identities, "index"):
        identities.index = idx  # type: ignore[attr-defined]
    return idx


def resolve(
    repo: Repository | Iterable[Rule],
    endpoint_labels: Iterable[str],
    identities: Mapping[int, Iterable[str]],
    enforcement: str = "default",
    *,
    allow_localhost: bool = False,
) -> EndpointPolicy:
    """Compute the policy-map entries of the endpoint with ``endpoint_labels``.

    ``identities`` maps every known identity (endpoints, CIDR identities, and
    optionally the reserved ones, which are added anyway) to its labels.
    ``allow_localhost`` adds (ingress, host, any) when ingress is enforced, as
    Cilium's ``allow-localhost`` option does for health checks.
    """
    steps = resolve_steps(repo, endpoint_labels, identities, enforcement, allow_localhost=allow_localhost)
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]


def resolve_steps(
    repo: Repository | Iterable[Rule],
    endpoint_labels: Iterable[str],
    identities: Mapping[int, Iterable[str]],
    enforcement: str = "default",
    *,
    allow_localhost: bool = False,
) -> Generator[None, None, EndpointPolicy]:
    """:func:`resolve` as a generator that yields between entries, so the
    agent's event loop can serve other calls while a large policy resolves
    (the caller decides how often to give it a turn)."""
    ls = LabelSet.of(endpoint_labels)
    selected = repo.selecting(ls) if isinstance(repo, Repository) else selecting_rules(repo, ls)
    index = identity_index(identities)
    acc: l7merge.Acc = {}
    enforced: dict[str, bool] = {}
    for direction in DIRECTIONS:
        enforced[direction] = _enforced(enforcement, selected, direction)
        if not enforced[direction]:
            continue
        sections = [e for r in selected for e in r.section(direction)]
        requirements = [s for e in sections for s in e.requires]
        for entry in sections:
            yield
            if not _is_effective(entry):
                continue
            peers = index.peers(entry, endpoint_selector_selects)
            if peers is None and not requirements:
                ids = {WILDCARD_IDENTITY}
            elif requirements:
                pool = index.all() if peers is None else peers
                ids = {i for i in pool if all(r.matches(index.labels(i)) for r in requirements)}
            else:
                ids = peers  # type: ignore[assignment]
            if not entry.to_ports:
                acc.update(((direction, i, 0, 0), None) for i in ids)
                continue
            for (port, proto), l7 in entry.l7_by_pair().items():
                for i in ids:
                    l7merge.add(acc, (direction, i, port, proto), l7)
    if allow_localhost and enforced["ingress"]:
        acc[("ingress", HOST_IDENTITY, 0, 0)] = None
    revision = repo.revision if isinstance(repo, Repository) else 0
    return EndpointPolicy(enforced["ingress"], enforced["egress"], l7merge.entries(acc, PolicyEntry), revision)


def cidr_prefixes(repo: Repository | Iterable[Rule]) -> set[str]:
    """Every prefix the agent must give a CIDR identity (and an ipcache entry):
    the prefixes of every CIDR rule after except-subtraction, AND the except
    prefixes themselves (so that LPM lookups inside an except find the except's
    identity instead of falling into a wider, allowed prefix)."""
    if isinstance(repo, Repository):
        return repo.cidr_prefixes()
    out: set[str] = set()
    for rule in repo:
        out |= rule_prefixes(rule)
    return out


# ---------------------------------------------------------------------------
# trace


def _fmt_labels(ls: LabelSet) -> str:
    return "[" + " ".join(sorted(ls.strings)) + "]"


def _describe_peers(entry: PeerRule) -> str:
    verb = "from" if entry.DIRECTION == "ingress" else "to"
    if entry.allows_all_peers:
        peers = "any peer" if not entry.entities else "entities [all]"
    elif entry.endpoints:
        peers = "labels " + ", ".join(str(s) for s in entry.endpoints)
    elif entry.entities:
        peers = "entities [" + " ".join(entry.entities) + "]"
    else:
        peers = "CIDR [" + " ".join(str(n) for n in entry.cidr_prefixes()) + "]"
    l4 = entry.l4_pairs()
    if l4 is None:
        ports = "all ports"
    else:
        ports = "ports [" + " ".join(f"{p}/{PROTO_NAMES[n]}" for p, n in sorted(l4)) + "]"
    return f"Allows {verb} {peers} on {ports}"


def _is_endpoint(ls: LabelSet) -> bool:
    return WORLD_LABEL not in ls.strings and HOST_LABEL not in ls.strings


def _trace_direction(
    rules: tuple[Rule, ...],
    direction: str,
    subject: LabelSet,
    peer: LabelSet,
    dport: int | None,
    protos: frozenset[int],
    enforcement: str,
    allow_localhost: bool,
) -> tuple[bool, list[str]]:
    lines = [f"Resolving {direction} policy for {_fmt_labels(subject)}"]
    title = direction.capitalize()
    if not _is_endpoint(subject):
        lines.append(f"{title} verdict: allowed (not an endpoint, no {direction} policy)")
        return True, lines
    selected = [r for r in rules if r.endpoint_selector.matches(subject)]
    enforced = _enforced(enforcement, selected, direction)
    covered: set[int] = set()
    l7 = _TraceL7()
    requirements_ok = True
    for rule in selected:
        tag = f" [{' '.join(rule.label_strings)}]" if rule.labels else ""
        lines.append(f"* Rule {rule.endpoint_selector}{tag}: selected")
        for entry in rule.section(direction):
            for req in entry.requires:
                ok = req.matches(peer)
                requirements_ok &= ok
                verb = "from" if direction == "ingress" else "to"
                lines.append(f"    Requires {verb} labels {req}: {'satisfied' if ok else 'NOT satisfied'}")
            if not _is_effective(entry):
                continue
            match = peer_matcher(entry)
            peer_ok = match is None or match(peer)
            l4 = entry.l4_pairs()
            if l4 is None:
                got = set(protos)
            elif dport is None:
                got = set()
            else:
                got = {p for p in protos if (dport, p) in l4}
            hit = peer_ok and bool(got)
            if hit:
                covered |= got
            lines.append(f"    {_describe_peers(entry)}: {'match' if hit else 'no match'}")
            if hit and u8proto.TCP in got:
                lines += l7.add(entry, dport)
    lines.append(f"{len(selected)}/{len(rules)} rules selected")
    if allow_localhost and direction == "ingress" and HOST_LABEL in peer.strings:
        covered |= protos
        l7.plain = True
        lines.append("Host is always allowed (allow-localhost)")
    allowed_by_rule = bool(covered) and protos <= covered
    lines.append("Found allow rule" if allowed_by_rule else "No rule found")
    if not enforced:
        lines.append(f"{title} verdict: allowed ({direction} policy not enforced)")
        return True, lines
    if not requirements_ok:
        lines.append(f"{title} verdict: denied (requirements not met)")
        return False, lines
    lines.append(f"{title} verdict: {'allowed' + l7.verdict() if allowed_by_rule else 'denied'}")
    return allowed_by_rule, lines


class _TraceL7:
    """The L7 rules of the entries a trace matched on TCP: as in resolution,
    the connection goes to the proxy when every matching entry has L7 rules,
    which then allow the union of them."""

    def __init__(self) -> None:
        self.plain = False
        self.rules: set[PortRuleHTTP] = set()

    def add(self, entry: PeerRule, dport: int | None) -> list[str]:
        rules = entry.l7_by_pair().get((dport, u8proto.TCP)) if entry.to_ports and dport else None
        if rules is None:
            self.plain = True
            return []
        self.rules.update(rules)
        return [f"      with L7 HTTP rules {_fmt_http(rules)}"]

    def verdict(self) -> str:
        if self.plain or not self.rules:
            return ""
        return f", redirected to proxy (HTTP requests allowed: {_fmt_http(self.rules)})"


def _fmt_http(rules: Iterable[PortRuleHTTP]) -> str:
    return "[" + " ".join(str(r) for r in sorted(rules)) + "]"


def trace(
    repo: Repository | Iterable[Rule],
    src_labels: Iterable[str],
    dst_labels: Iterable[str],
    dport: int | None = None,
    proto: str = "TCP",
    identities: Mapping[int, Iterable[str]] | None = None,
    enforcement: str = "default",
    *,
    allow_localhost: bool = False,
) -> tuple[str, list[str]]:
    """``cilium policy trace``: would traffic from ``src_labels`` to
    ``dst_labels`` on ``dport``/``proto`` be allowed?

    Checks the destination's ingress policy and the source's egress policy
    (a side that is world/host has none). ``dport=None`` asks about traffic on
    any port, so only entries without ``toPorts`` can allow it; ``proto`` is
    TCP, UDP, ANY (both must be allowed) or ICMP (no port). ``identities`` is
    only used to show the identity numbers of the two sides.
    Returns ("ALLOWED"|"DENIED", explanation lines).
    """
    proto_u = proto.upper()
    if proto_u == "ICMP":
        protos, dport = frozenset({u8proto.ICMP}), None
    elif proto_u == "ANY":
        protos = frozenset({u8proto.TCP, u8proto.UDP})
    elif proto_u in PROTO_NUMBERS:
        protos = frozenset({PROTO_NUMBERS[proto_u]})
    else:
        raise BadRequest(f"invalid protocol {proto!r}, must be TCP, UDP, ANY or ICMP")
    if dport is not None and not 1 <= dport <= 65535:
        raise BadRequest(f"port {dport} is out of range 1-65535")
    rules = repo.rules if isinstance(repo, Repository) else tuple(repo)
    src, dst = LabelSet.of(src_labels), LabelSet.of(dst_labels)
    ports = f"[{dport}/{proto_u}]" if dport is not None else "[]"
    lines = [f"Tracing From: {_fmt_labels(src)} => To: {_fmt_labels(dst)} Ports: {ports}"]
    if identities:
        table = identity_table(identities)
        for side, ls in (("From", src), ("To", dst)):
            ids = [str(i) for i, lbls in sorted(table.items()) if lbls.strings == ls.strings]
            if ids:
                lines.append(f"{side} identity: {', '.join(ids)}")
    lines.append("")
    ok_in, in_lines = _trace_direction(rules, "ingress", dst, src, dport, protos, enforcement, allow_localhost)
    lines += in_lines + [""]
    ok_out, out_lines = _trace_direction(rules, "egress", src, dst, dport, protos, enforcement, allow_localhost)
    lines += out_lines + [""]
    verdict = "ALLOWED" if ok_in and ok_out else "DENIED"
    lines.append(f"Final verdict: {verdict}")
    return verdict, lines
