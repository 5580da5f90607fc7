"""What the monitor costs the datapath: TCP throughput between two endpoints
with nobody reading cilium_events, with a reader at the default aggregation
(medium) and with a reader at ``none`` (a trace for every packet, twice);
also at ``none`` with a reader woken every 64 events instead of every event,
and with no reader. Beside the throughput, the kernel's run-time statistics
give from-container's own cost per packet.

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

import ctypes
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from bench.common import figure, private_bpf_base, ratios, round_args, spread
from docker_cilium.datapath.bpf import libbpf
from docker_cilium.datapath.loader import Datapath, compile_datapath, unpin_all
from docker_cilium import defaults
from docker_cilium import logging as dc_logging
from docker_cilium.datapath.maps import configmap as cfg
from docker_cilium.datapath.maps.eventsmap import NOTIFY_TRACE, EventReader
from docker_cilium.datapath.maps.policymap import PolicyEntry
from tests.privileged.conftest import NETTOOL, Topology, make_abc

PORT = 5201
BATCH = 64
MODES = {  # name -> (reader's wakeup_events, 0 = no reader; aggregation level)
    "no-reader": (0, cfg.MONITOR_AGGREGATION_MEDIUM),
    "reader-medium": (1, cfg.MONITOR_AGGREGATION_MEDIUM),
    "reader-none": (1, cfg.MONITOR_AGGREGATION_NONE),
    f"reader-none-wakeup-{BATCH}": (BATCH, cfg.MONITOR_AGGREGATION_NONE),
    "no-reader-none": (0, cfg.MONITOR_AGGREGATION_NONE),
}


class ProgStats:
    """Kernel run-time statistics of one program (BPF_ENABLE_STATS, held only
    while this object lives: nothing machine-wide is left switched on). The
    ns per run of from-container is the datapath's own per-packet cost,
    which the throughput of a shared, noisy machine only shows blurred."""

    def __init__(self, prog_fd: int) -> None:
        lib = libbpf()
        self._stats_fd = lib.bpf_enable_stats(0)     # BPF_STATS_RUN_TIME
        if self._stats_fd < 0:
            raise OSError(-self._stats_fd, "bpf_enable_stats")
        info = (ctypes.c_uint32 * 2)()                   # bpf_prog_info: type, id
        size = ctypes.c_uint32(ctypes.sizeof(info))
        if lib.bpf_obj_get_info_by_fd(prog_fd, info, ctypes.byref(size)) < 0:
            raise OSError(ctypes.get_errno(), "bpf_obj_get_info_by_fd")
        self.prog_id = info[1]

    def read(self) -> tuple[int, int]:
        """(run_time_ns, run_cnt) so far."""
        out = subprocess.run(["bpftool", "prog", "show", "id", str(self.prog_id), "-j"],
                             capture_output=True, text=True, check=True).stdout
        d = json.loads(out)
        return d.get("run_time_ns", 0), d.get("run_cnt", 0)

    def close(self) -> None:
        os.close(self._stats_fd)


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
            evs = self.reader.poll(50) + self.reader.consume()   # consume: a batching ring's rest
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


def run_mode(dp: Datapath, stats: ProgStats, client_ns: str, server_ip: str, mode: str,
             seconds: int) -> dict:
    assert dp.maps is not None
    wakeup, level = MODES[mode]
    dp.maps.config.set_monitor_aggregation(level)
    reader = ReaderThread(dp.maps.event_reader(page_cnt=256, wakeup_events=wakeup)) if wakeup else None
    try:
        ns0, runs0 = stats.read()
        t0 = time.perf_counter()
        gbps = iperf(client_ns, server_ip, seconds)
        elapsed = time.perf_counter() - t0
        ns1, runs1 = stats.read()
    finally:
        counts = reader.stop() if reader else {"events": 0, "traces": 0, "lost": 0}
        if reader:
            reader.reader.close()
    return {"gbit_s": gbps, "ns_per_packet": (ns1 - ns0) / max(1, runs1 - runs0),
            "packets": runs1 - runs0, **counts, "events_per_s": counts["events"] / elapsed}


def main() -> None:
    args = round_args(__doc__)
    dc_logging.setup()  # logs to stderr: stdout carries only the figures
    base = private_bpf_base()
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
        stats = ProgStats(dp.prog_fds["from_container"])
        runs: dict[str, list[dict]] = {m: [] for m in MODES}
        try:
            for _ in range(args.rounds):
                for mode in MODES:
                    runs[mode].append(run_mode(dp, stats, a.netns, b.ipv4, mode, args.seconds))
        finally:
            stats.close()
        med = {m: statistics.median(r["gbit_s"] for r in rs) for m, rs in runs.items()}
        ns = {m: statistics.median(r["ns_per_packet"] for r in rs) for m, rs in runs.items()}
        gbit = {m: [r["gbit_s"] for r in rs] for m, rs in runs.items()}
        print(json.dumps({
            "seconds_per_run": args.seconds,
            "gbit_s_median": {m: round(v, 2) for m, v in med.items()},
            "ratio_over_no_reader": {m: round(v / med["no-reader"], 3) for m, v in med.items()},
            "from_container_ns_per_packet_median": {m: round(v) for m, v in ns.items()},
            "runs": {m: [{k: round(v, 2) if isinstance(v, float) else v for k, v in r.items()} for r in rs]
                     for m, rs in runs.items()},
            "figures": [figure(f"TCP throughput, monitor reader ({m[len('reader-'):]}) / no reader",
                               med[m] / med["no-reader"], "x", baseline="no reader",
                               rounds=ratios(gbit[m], gbit["no-reader"]),
                               absolute=f"{spread(gbit[m], 'Gbit/s')}, no reader {spread(gbit['no-reader'])}; "
                                        f"from-container {round(ns[m])} ns/packet")
                        for m in ("reader-medium", "reader-none")],
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
