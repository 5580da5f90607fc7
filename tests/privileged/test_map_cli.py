"""`cilium map list|get` through the real API on a real datapath's pinned maps.

The API app is the agent's (served by the unit daemon, tests/unit/test_cli.py)
with its bpf root pointed at a datapath loaded into a private pin root;
what the CLI prints is held against bpftool's view of the same pins.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess

from docker_cilium import defaults
from docker_cilium.datapath.bpf import BpfMap, num_possible_cpus
from docker_cilium.datapath.maps.lxcmap import EndpointInfo
from docker_cilium.datapath.maps.metricsmap import METRICS_MAP, metrics_key, metrics_value
from docker_cilium.datapath.maps.policymap import PolicyEntry
from docker_cilium.datapath.maps.registry import DATAPATH_ONLY_MAPS, MAP_TYPES
from tests.unit.test_cli import agent, run  # noqa: F401  (the fixture, and the CLI runner)

EP = EndpointInfo(ifindex=4242, lxc_id=77, sec_identity=1234, mac="02:00:00:00:00:07",
                  node_mac="02:00:00:00:00:08", ipv4="10.97.0.7", ipv6="f00d::a61:0:0:4d",
                  ingress_enforced=True, egress_enforced=False)


def bpftool(*args: str) -> dict | list:
    return json.loads(subprocess.run(["bpftool", "-j", "map", *args], check=True,
                                     capture_output=True, text=True).stdout)


def populate(dp) -> None:
    dp.maps.endpoints.upsert(EP)
    dp.maps.ipcache.upsert("10.97.0.0/24", 5555)
    dp.maps.policy.set_endpoint_policy(77, [PolicyEntry(1234, "ingress", 8080, "tcp", proxy_port=15001)])
    dp.maps.raw[METRICS_MAP].update(metrics_key(reason=133, dir=1), metrics_value(count=3, bytes=300))


def test_map_list_matches_the_kernel(agent, datapath, pin_root):  # noqa: F811
    sock, daemon = agent
    daemon.config.bpf_root = defaults.bpf_root_of(pin_root)
    populate(datapath)
    res = run(sock, "map", "list")
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0].split() == ["Name", "Type", "Num", "entries", "Max", "entries"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[1:]}
    assert set(rows) == set(MAP_TYPES) | set(DATAPATH_ONLY_MAPS)
    for name, (typ, entries, max_entries) in rows.items():
        kernel = bpftool("show", "pinned", os.path.join(pin_root, name))
        assert (typ, int(max_entries)) == (kernel["type"], kernel["max_entries"]), name
    for name in ("cilium_lxc", "cilium_ep_ifindex", "cilium_ipcache", "cilium_policy", "cilium_metrics"):
        assert int(rows[name][1]) == len(bpftool("dump", "pinned", os.path.join(pin_root, name))), name
    assert rows["cilium_lxc"][1] == "2" and rows["cilium_ipcache"][1] == "1" and rows["cilium_metrics"][1] == "1"
    listed = json.loads(run(sock, "map", "list", "-o", "json").output)
    lxc = next(m for m in listed if m["name"] == "cilium_lxc")
    kernel = bpftool("show", "pinned", lxc["path"])
    assert lxc == {"name": "cilium_lxc", "path": os.path.join(pin_root, "cilium_lxc"), "type": "hash",
                   "key-size": 20, "value-size": 44, "max-entries": kernel["max_entries"], "entries": 2}
    verbose = run(sock, "map", "list", "--verbose").output
    assert "## Map: cilium_lxc (hash, 2/" in verbose and "address=10.97.0.7 family=4" in verbose


def test_debuginfo_maps_are_the_map_list(agent, datapath, pin_root):  # noqa: F811
    sock, daemon = agent
    daemon.config.bpf_root = defaults.bpf_root_of(pin_root)
    populate(datapath)
    listed = json.loads(run(sock, "map", "list", "-o", "json").output)
    assert {m["name"] for m in listed} == set(MAP_TYPES) | set(DATAPATH_ONLY_MAPS)
    assert json.loads(run(sock, "debuginfo", "-o", "json").output)["maps"] == listed
    report = run(sock, "debuginfo").output
    section = report.split("#### BPF maps\n", 1)[1].split("####", 1)[0]
    assert next(line for line in section.splitlines() if line.startswith("cilium_lxc ")).split()[1] == "2"


def test_map_get_decodes_entries(agent, datapath, pin_root):  # noqa: F811
    sock, daemon = agent
    daemon.config.bpf_root = defaults.bpf_root_of(pin_root)
    populate(datapath)
    res = run(sock, "map", "get", "cilium_lxc")
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0].split() == ["Key", "Value"]
    v4 = next(line for line in lines if line.startswith("address=10.97.0.7 family=4 "))
    assert ("ifindex=4242 lxc_id=77 flags=1 sec_identity=1234 mac=02:00:00:00:00:07 node_mac=02:00:00:00:00:08 "
            "ipv4=10.97.0.7 ipv6=f00d::a61:0:0:4d") in v4
    assert any(line.startswith("address=f00d::a61:0:0:4d family=6 ") for line in lines)

    ipcache = json.loads(run(sock, "map", "get", "cilium_ipcache", "-o", "json").output)
    assert ipcache["cache"] == [{"key": {"prefixlen": 32 + 24, "family": 4, "address": "10.97.0.0"},
                                 "value": {"sec_identity": 5555, "tunnel_endpoint": "0.0.0.0", "flags": 0}}]
    policy = json.loads(run(sock, "map", "get", "cilium_policy", "-o", "json").output)["cache"]
    entry = next(e for e in policy if e["key"]["dport"] == 8080)
    assert entry["key"] == {"sec_identity": 1234, "lxc_id": 77, "dport": 8080, "proto": 6, "direction": 0}
    assert entry["value"]["proxy_port"] == 15001
    metrics = json.loads(run(sock, "map", "get", "cilium_metrics", "-o", "json").output)
    assert metrics["type"] == "percpu_hash" and len(metrics["cache"]) == 1
    per_cpu = metrics["cache"][0]["value"]
    assert len(per_cpu) == num_possible_cpus() and all(v == {"count": 3, "bytes": 300} for v in per_cpu)
    events = json.loads(run(sock, "map", "get", "cilium_events", "-o", "json").output)
    assert events["type"] == "perf_event_array" and all(set(e) == {"key"} for e in events["cache"])
    budget = json.loads(run(sock, "map", "get", "cilium_ct_budget", "-o", "json").output)
    assert budget["cache"][0] == {"key": 0, "value": {"window_start": 0, "count": 0}}
    # a map the agent has no mirror for (only the programs use it): raw bytes in hex
    frag_path = os.path.join(pin_root, "cilium_ipv4_frag_datagrams")
    frags = BpfMap.open_pinned(frag_path, ctypes.c_uint8 * 12, ctypes.c_uint8 * 8)
    try:
        frags.update((ctypes.c_uint8 * 12)(*range(1, 13)), (ctypes.c_uint8 * 8)(0, 80, 0, 53, 17, 0, 0, 0))
    finally:
        frags.close()
    raw = json.loads(run(sock, "map", "get", "cilium_ipv4_frag_datagrams", "-o", "json").output)
    assert raw["cache"] == [{"key": "0102030405060708090a0b0c", "value": "0050003511000000"}]


def test_map_get_errors(agent, datapath, pin_root):  # noqa: F811
    sock, daemon = agent
    daemon.config.bpf_root = defaults.bpf_root_of(pin_root)
    res = run(sock, "map", "get", "cilium_nosuch")
    assert res.exit_code == 1
    assert res.output.strip() == f"Error: no map cilium_nosuch pinned under {pin_root} (404)"
    res = run(sock, "map", "get", "..")
    assert res.exit_code == 1 and "invalid map name '..'" in res.output and "(400)" in res.output
