"""`cilium policy trace` against real packets: for each policy, every
endpoint's resolved policy goes into the BPF maps, then every probe's fate in
the kernel must be what ``trace()`` predicts for the same labels.

trace() and resolve() share their peer matcher, so comparing them with each
other proves little; here the judge is the datapath (see conftest.py).
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest

from docker_cilium.datapath.maps.policymap import PolicyEntry as MapPolicyEntry
from docker_cilium.policy import Repository, resolve, trace

pytestmark = pytest.mark.privileged

OK, TIMEOUT = 0, 2
LABELS = {"a": ["container:role=frontend"], "b": ["container:role=backend"], "c": ["container:role=db"]}
HOST = ["reserved:host"]


def sel(role: str) -> dict:
    return {"matchLabels": {"role": role}}


def ports(*specs: tuple[int, str]) -> list[dict]:
    return [{"ports": [{"port": str(p), "protocol": proto} for p, proto in specs]}]


POLICIES = {
    "l3-l4": [{"endpointSelector": sel("backend"),
               "ingress": [{"fromEndpoints": [sel("frontend")], "toPorts": ports((8080, "TCP"))}]}],
    "l3-only-and-egress": [
        {"endpointSelector": sel("backend"), "ingress": [{"fromEndpoints": [sel("frontend")]}]},
        {"endpointSelector": sel("frontend"),
         "egress": [{"toEndpoints": [sel("backend")], "toPorts": ports((8080, "TCP"), (8081, "UDP"))}]},
    ],
    "port-only-and-host": [{"endpointSelector": sel("backend"),
                            "ingress": [{"toPorts": ports((8081, "TCP"))}, {"fromEntities": ["host"]}]}],
    "egress-deny-all-and-udp": [
        {"endpointSelector": sel("db"), "egress": [{}]},
        {"endpointSelector": sel("frontend"),
         "ingress": [{"fromEndpoints": [{}], "toPorts": ports((8080, "UDP"))}]},
    ],
    "any-protocol-and-requires": [
        {"endpointSelector": sel("db"), "ingress": [{"fromEndpoints": [{}], "toPorts": ports((8081, "ANY"))}]},
        {"endpointSelector": sel("db"), "ingress": [{"fromRequires": [sel("backend")]}]},
    ],
}
# (port, protocol) probed; None is ICMP echo (no port: only L3-only entries allow it)
PROBES = [(8080, "TCP"), (8081, "TCP"), (8080, "UDP"), (8081, "UDP"), (None, "ICMP")]


def probe(topo, src, dst, port: int | None, proto: str) -> bool:
    """True if the packet got through (answer received), False if dropped."""
    if proto == "ICMP":
        return topo.ping(src, dst.ipv4)
    rc = (topo.tcp if proto == "TCP" else topo.udp)(src, dst.ipv4, port)
    assert rc in (OK, TIMEOUT), f"probe {proto}/{port} to {dst.name}: unexpected result {rc}"
    return rc == OK


@pytest.mark.parametrize("name", POLICIES)
def test_trace_verdict_is_the_packet_verdict(topo, datapath, abc, name):
    maps = datapath.maps
    for c in abc:
        topo.serve(c, 8080, 8081)
    repo = Repository()
    repo.add(json.dumps(POLICIES[name]))
    identities = {c.identity: LABELS[c.name] for c in abc}
    for c in abc:
        pol = resolve(repo, LABELS[c.name], identities)
        maps.policy.set_endpoint_policy(c.lxc_id, [
            MapPolicyEntry(identity=e.identity, direction=e.direction, dport=e.port, proto=e.proto)
            for e in pol.entries])
        maps.endpoints.upsert(c.endpoint(ingress=pol.ingress_enforced, egress=pol.egress_enforced))
    maps.ct.flush()

    cases = [(s, d, port, proto) for s in [None, *abc] for d in abc if s is not d for port, proto in PROBES]
    with ThreadPoolExecutor(max_workers=8) as pool:
        seen = list(pool.map(lambda case: probe(topo, *case), cases))
    mismatches, allowed = [], 0
    for (src, dst, port, proto), passed in zip(cases, seen):
        src_labels = HOST if src is None else LABELS[src.name]
        verdict, lines = trace(repo, src_labels, LABELS[dst.name], port, proto, identities)
        allowed += verdict == "ALLOWED"
        if (verdict == "ALLOWED") != passed:
            mismatches.append(f"{src.name if src else 'host'} -> {dst.name} {proto}/{port}: "
                              f"trace {verdict}, packet {'passed' if passed else 'dropped'}")
    assert not mismatches, "\n".join(mismatches)
    # Each policy allows some probes and denies others: both outcomes are compared.
    assert 0 < allowed < len(cases), (name, allowed, len(cases))
