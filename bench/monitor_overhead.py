"""What the monitor costs the datapath: TCP throughput between two endpoints
with nobody reading cilium_events, with a reader at the default aggregation
(medium) and with a reader at ``none`` (a trace for every packet, twice).

The endpoints are two network namespaces on host veths carrying the real
bpf_lxc programs (the privileged tests' topology), the server's ingress
policy enforced and allowing the client on the iperf3 port, so every packet
goes through conntrack and the established-flow policy lookups. The reader is
the agent's EventReader (libbpf perf_buffer) draining the ring in a thread, as
fast as Python decodes. Modes are interleaved round by round so that the
figures compare like with like on a shared machine. Needs root, clang,
bpftool and iperf3; no agent, no dockerd.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from docker_cilium.datapath.loader import Datapath, compile_datapath, unpin_all
from docker_cilium import defaults
from docker_cilium import logging as dc_logging
from docker_cilium.datapath.maps import configmap as cfg
from docker_cilium.datapath.maps.eventsmap import NOTIFY_TRACE, EventReader
from docker_cilium.datapath.maps.policymap import PolicyEntry
from tests.privileged.conftest import NETTOOL, Topology, make_abc

PORT = 5201
MODES = {  # name -> (reader attached, aggregation level)
    "no-reader": (False, cfg.MONITOR_AGGREGATION_MEDIUM),
    "reader-medium": (True, cfg.MONITOR_AGGREGATION_MEDIUM),
    "reader-none": (True, cfg.MONITOR_AGGREGATION_NONE),
}


class ReaderThread:
    """Drains cilium_events until stopped; counts events, traces and losses."""

    def __init__(self, reader: EventReader) -> None:
        self.reader = reader
        self.events = self.traces = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            evs = self.reader.poll(50)
            self.events += len(evs)
            self.traces += sum(1 for e in evs if e.type == NOTIFY_TRACE)

    def stop(self) -> dict[str, int]:
        self._stop.set()
        self._thread.join()
        evs = self.reader.consume()
        self.events += len(evs)
        return {"events": self.events, "traces": self.traces, "lost": self.reader.lost}


def iperf(client_ns: str, server_ip: str, seconds: int) -> float:
    out = subprocess.run(["ip", "netns", "exec", client_ns, "iperf3", "-c", server_ip, "-p", str(PORT),
                          "-t", str(seconds), "-J"], capture_output=True, text=True, check=True,
                         timeout=seconds + 30).stdout
    return json.loads(out)["end"]["sum_received"]["bits_per_second"] / 1e9


def run_mode(dp: Datapath, client_ns: str, server_ip: str, mode: str, seconds: int) -> dict:
    assert dp.maps is not None
    with_reader, level = MODES[mode]
    dp.maps.config.set_monitor_aggregation(level)
    reader = ReaderThread(dp.maps.event_reader(page_cnt=256)) if with_reader else None
    try:
        t0 = time.perf_counter()
        gbps = iperf(client_ns, server_ip, seconds)
        elapsed = time.perf_counter() - t0
    finally:
        counts = reader.stop() if reader else {"events": 0, "traces": 0, "lost": 0}
        if reader:
            reader.reader.close()
    return {"gbit_s": gbps, **counts, "events_per_s": counts["events"] / elapsed}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    args = ap.parse_args()
    dc_logging.setup()  # logs to stderr: stdout carries only the figures
    base = os.path.join(defaults.BPFFS_ROOT, f"dcbench-{os.getpid()}-{random.randrange(1 << 30):x}")
    pin_root = defaults.bpf_pin_root(base)
    topo = Topology(str(NETTOOL))
    dp = Datapath.load(compile_datapath(out_dir=tempfile.mkdtemp(prefix="dcbench-bpf-")), pin_root=pin_root)
    server = None
    try:
        with contextlib.redirect_stdout(sys.stderr):   # its timing lines: stdout is the JSON
            a, b, _c = make_abc(topo, dp)
        assert dp.maps is not None
        dp.maps.endpoints.upsert(b.endpoint(ingress=True))
        dp.maps.policy.set_endpoint_policy(b.lxc_id, [PolicyEntry(a.identity, "ingress", PORT, "tcp")])
        server = subprocess.Popen(["ip", "netns", "exec", b.netns, "iperf3", "-s", "-p", str(PORT)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        runs: dict[str, list[dict]] = {m: [] for m in MODES}
        for _ in range(args.rounds):
            for mode in MODES:
                runs[mode].append(run_mode(dp, a.netns, b.ipv4, mode, args.seconds))
        med = {m: statistics.median(r["gbit_s"] for r in rs) for m, rs in runs.items()}
        print(json.dumps({
            "seconds_per_run": args.seconds,
            "gbit_s_median": {m: round(v, 2) for m, v in med.items()},
            "ratio_over_no_reader": {m: round(v / med["no-reader"], 3) for m, v in med.items()},
            "runs": {m: [{k: round(v, 2) if isinstance(v, float) else v for k, v in r.items()} for r in rs]
                     for m, rs in runs.items()},
        }, indent=2))
    finally:
        if server is not None:
            server.kill()
            server.wait()
        dp.close()
        errors = topo.cleanup()
        unpin_all(pin_root)
        for dirpath, _dirs, files in os.walk(base, topdown=False):
            for f in files:
                os.unlink(os.path.join(dirpath, f))
            os.rmdir(dirpath)
        if errors:
            raise SystemExit(f"cleanup errors: {errors}")


if __name__ == "__main__":
    main()
