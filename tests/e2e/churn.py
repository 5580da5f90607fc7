"""Container churn on a cilium network, and what the host holds for it.

Shared by tests/e2e/test_churn.py (the short form in `make test`) and
bench/soak.py (`make soak`, the same loop for an hour). A snapshot reads the
host itself, not the agent's own report: our links, the routes into the
agent's ranges, the keys of the endpoint, policy and ipcache maps, conntrack
entries, the agent's iptables rules, and every key of both embedded stores.
Two snapshots differ exactly where something leaked.
"""

from __future__ import annotations

import ipaddress
import json
import re
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from pyroute2 import IPRoute

from docker_cilium import defaults
from docker_cilium.datapath.cleanup import is_our_link
from docker_cilium.datapath.maps.registry import DatapathMaps
from tests.e2e.conftest import TEST_LABEL
from tests.helpers import Agent, docker, run

#: Maps whose keys must be back where they were once the containers are gone.
#: Flags of the churning agent. A kill -9 between an endpoint's last write
#: and CreateEndpoint's reply leaves an endpoint dockerd never learnt of; the
#: start-up reconcile deletes it once it is this old (60 s by default, dockerd
#: retries a call for up to 30 s), inside the churn's 30 s waits.
CHURN_AGENT_FLAGS = ["--docker-reconcile-grace", "5"]
TRACKED_MAPS = ("cilium_lxc", "cilium_ep_ifindex", "cilium_policy", "cilium_ipcache")
#: The embedded stores under --lib-dir (node-local state, identities).
STORES = ("node-state.db", "kvstore.db")
_COUNTERS = re.compile(r"\[\d+:\d+\]")


@dataclass(frozen=True)
class HostState:
    """What the host and the agent's stores hold at one moment."""

    links: frozenset[str]
    routes: frozenset[str]
    map_keys: dict[str, frozenset[bytes]]
    ct: frozenset[tuple[str, str, int, int, int]]
    iptables: tuple[str, ...]
    kv: dict[str, frozenset[str]] = field(default_factory=dict)


def alloc_ranges(agent: Agent) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    addressing = agent.cli_json("config")["addressing"]
    return [ipaddress.ip_network(addressing[f]["alloc-range"]) for f in ("ipv4", "ipv6")
            if addressing[f]["enabled"]]


def _routes(ranges: list) -> frozenset[str]:
    """Routes (any table) to a destination inside the agent's ranges."""
    out = set()
    with IPRoute() as ip:
        for family in (2, 10):
            for r in ip.get_routes(family=family):  # every table
                dst = r.get("dst")
                if dst is None:
                    continue
                net = ipaddress.ip_network(f"{dst}/{r['dst_len']}", strict=False)
                if any(net.version == rng.version and net.subnet_of(rng) for rng in ranges):
                    out.add(f"{net} table {r.get('table')} oif {r.get('oif')}")
    return frozenset(out)


def _links() -> frozenset[str]:
    with IPRoute() as ip:
        return frozenset(n for n in (l.get("ifname") or "" for l in ip.get_links()) if is_our_link(n))


def _iptables() -> tuple[str, ...]:
    lines = []
    for binary in ("iptables-save", "ip6tables-save"):
        for line in run(binary, check=False).stdout.splitlines():
            if "CILIUM_" in line or "cilium" in line:
                lines.append(f"{binary}: {_COUNTERS.sub('', line).strip()}")
    return tuple(sorted(lines))


def _kv(lib_dir: Path) -> dict[str, frozenset[str]]:
    """Every key of each embedded store, read-only beside the running agent (WAL)."""
    out = {}
    for name in STORES:
        path = lib_dir / name
        if not path.exists():
            continue
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
        try:
            out[name] = frozenset(k for (k,) in conn.execute("SELECT key FROM kv"))
        finally:
            conn.close()
    return out


def _maps(bpf_root: str, ranges: list | None) -> tuple[dict[str, frozenset[bytes]], frozenset[tuple]]:
    """Each tracked map's keys and the conntrack tuples. ``cilium_ipcache``
    keeps only prefixes inside ``ranges`` (the endpoints'): its host entries
    follow the host's addresses, which other agents on this machine change."""
    dp = DatapathMaps.open(defaults.bpf_pin_root(bpf_root))
    try:
        keys = {name: frozenset(bytes(k) for k in dp.raw[name].keys()) for name in TRACKED_MAPS
                if name != "cilium_ipcache"}
        prefixes = dp.ipcache.dump()
        keys["cilium_ipcache"] = frozenset(p.encode() for p in prefixes if ranges is None or any(
            ipaddress.ip_network(p).version == r.version and ipaddress.ip_network(p).subnet_of(r) for r in ranges))
        ct = frozenset((e.saddr, e.daddr, e.sport, e.dport, e.proto) for e in dp.ct.dump())
    finally:
        dp.close()
    return keys, ct


def occupancy(agent: Agent) -> dict[str, int]:
    """Entries in each tracked map and in conntrack (cheap enough to sample every few seconds)."""
    keys, ct = _maps(agent.bpf_root, None)
    return {**{name: len(k) for name, k in keys.items()}, "ct": len(ct)}


def snapshot(agent: Agent, ranges: list) -> HostState:
    keys, ct = _maps(agent.bpf_root, ranges)
    return HostState(links=_links(), routes=_routes(ranges), map_keys=keys, ct=ct, iptables=_iptables(),
                     kv=_kv(agent.lib_dir))


def leaks(before: HostState, after: HostState, addresses: set[str], kv: bool = True) -> list[str]:
    """What ``after`` holds that ``before`` did not (and what it lost), one line each.

    Conntrack entries count when they name one of ``addresses`` (the churned
    containers'): the host's own flows come and go on their own. ``kv=False``
    leaves the stores out (identities wait for the identity GC, a killed
    agent's references for its lease to expire).
    """
    out = [f"link {n}" for n in sorted(after.links - before.links)]
    out += [f"route {r}" for r in sorted(after.routes - before.routes)]
    for name in TRACKED_MAPS:
        extra, lost = after.map_keys[name] - before.map_keys[name], before.map_keys[name] - after.map_keys[name]
        show = (lambda k: k.decode()) if name == "cilium_ipcache" else (lambda k: k.hex())
        out += [f"{name} entry {show(k)}" for k in sorted(extra)]
        out += [f"{name} lost entry {show(k)}" for k in sorted(lost)]
    out += [f"ct {e}" for e in sorted(after.ct) if e[0] in addresses or e[1] in addresses]
    out += [f"iptables + {line}" for line in sorted(set(after.iptables) - set(before.iptables))]
    out += [f"iptables - {line}" for line in sorted(set(before.iptables) - set(after.iptables))]
    for name in STORES if kv else ():
        b, a = before.kv.get(name, frozenset()), after.kv.get(name, frozenset())
        out += [f"{name} key {k}" for k in sorted(a - b)] + [f"{name} lost key {k}" for k in sorted(b - a)]
    return out


@dataclass
class Started:
    name: str
    ok: bool
    error: str = ""


class Batch:
    """``docker run -d`` of several containers at once, collected by :meth:`results`.

    Each container pings the router, so it has conntrack entries the agent
    must flush when it goes."""

    def __init__(self, names: list[str], net: str, router4: str, labels: list[str]) -> None:
        self._pool = ThreadPoolExecutor(max_workers=max(1, len(names)))
        self._futures = [self._pool.submit(_run_one, n, net, router4, lbl) for n, lbl in zip(names, labels)]

    def results(self) -> list[Started]:
        try:
            return [f.result() for f in self._futures]
        finally:
            self._pool.shutdown()


def _run_one(name: str, net: str, router4: str, label: str) -> Started:
    # A ping every 2 s: the first ones may fall before the endpoint has its
    # identity (whose arrival flushes the init identity's flows).
    cmd = f"while :; do ping -c 1 -W 1 {router4} >/dev/null; sleep 2; done"
    res = docker("run", "-d", "--name", name, "--label", TEST_LABEL, "-l", label, "--net", net,
                 "busybox", "sh", "-c", cmd, check=False, timeout=180)
    return Started(name, res.returncode == 0, (res.stderr or res.stdout).strip())


def remove_containers(names: list[str]) -> None:
    """``docker rm -f`` each name at once; every removal must succeed."""
    with ThreadPoolExecutor(max_workers=max(1, len(names))) as pool:
        results = list(pool.map(lambda n: docker("rm", "-f", n, check=False, timeout=180), names))
    failed = [(n, r.stderr.strip()) for n, r in zip(names, results) if r.returncode != 0]
    assert not failed, f"docker rm -f failed: {failed}"


def addresses(names: list[str], net: str) -> dict[str, tuple[str, str]]:
    """Each running container's (IPv4, IPv6) on ``net``, as dockerd holds them."""
    if not names:
        return {}
    out = {}
    for info in json.loads(docker("inspect", *names).stdout):
        s = info["NetworkSettings"]["Networks"].get(net)
        if info["State"]["Running"] and s is not None:
            out[info["Name"].lstrip("/")] = (s["IPAddress"], s["GlobalIPv6Address"])
    return out


def duplicates(addrs: dict[str, tuple[str, str]], endpoints: list[dict]) -> list[str]:
    """Addresses held twice at one moment: by two containers, or by two of the agent's endpoints."""
    seen: dict[str, str] = {}
    out = []
    for name, pair in addrs.items():
        for ip in pair:
            if not ip:
                out.append(f"{name} has no address on the network: {pair}")
            elif ip in seen:
                out.append(f"{ip} held by {seen[ip]} and {name}")
            else:
                seen[ip] = name
    held: dict[str, int] = {}
    for ep in endpoints:
        for ip in (ep["addressing"].get("ipv4"), ep["addressing"].get("ipv6")):
            if ip and ip in held:
                out.append(f"{ip} held by endpoints {held[ip]} and {ep['id']}")
            elif ip:
                held[ip] = ep["id"]
    return out
