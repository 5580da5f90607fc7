"""What the socket LB costs a host process: TCP connection rate and
throughput from the host to a backend in a namespace, through a service VIP
(bpf_sock.c translates connect()) against the backend's address directly;
plus the connect4 hook's own run time per call (kernel BPF statistics).

Topology as the privileged tests: backend namespace on a host veth carrying
the real bpf_lxc programs, service in the real LB maps, bpf_sock.o attached
through pinned links to a private child cgroup of a private cgroup v2 mount
that only the clients join (the rest of the machine is untouched). The VIP
is blackholed, so an untranslated connection could not succeed. Modes
alternate round by round. Needs root, clang, bpftool and iperf3; no agent,
no dockerd. ``python -m bench.socket_lb [--rounds N] [--seconds S]``.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from bench.common import figure, private_bpf_base, ratios, round_args, spread
from bench.monitor_overhead import ProgStats
from docker_cilium import defaults
from docker_cilium import logging as dc_logging
from docker_cilium.datapath.loader import Datapath, compile_datapath, unpin_all
from docker_cilium.datapath.maps.lbmap import L4Addr
from docker_cilium.datapath.socketlb import SOURCE, SocketLB, detach, ensure_cgroup2
from tests.privileged.conftest import NETTOOL, PYTHON, Topology, make_abc

IPERF_PORT, CONN_PORT = 5201, 8090

# accept, read, answer, close: one short exchange per connection
SERVER = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(512)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    try:
        c.recv(16); c.sendall(b"ok")
    finally:
        c.close()
"""

# connections per second for S seconds, each connect + request + answer + close
CLIENT = r"""
import socket, sys, time
dst, port, secs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
n, end = 0, time.perf_counter() + secs
t0 = time.perf_counter()
while time.perf_counter() < end:
    s = socket.create_connection((dst, port), timeout=2)
    s.sendall(b"hi"); assert s.recv(16) == b"ok"
    s.close(); n += 1
print(n / (time.perf_counter() - t0))
"""


def _join(cgroup: str):
    def join() -> None:
        with open(os.path.join(cgroup, "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))
    return join


def conn_rate(cgroup: str, dst: str, seconds: int) -> float:
    out = subprocess.run([PYTHON, "-c", CLIENT, dst, str(CONN_PORT), str(seconds)], capture_output=True,
                         text=True, check=True, timeout=seconds + 30, preexec_fn=_join(cgroup)).stdout
    return float(out)


def iperf(cgroup: str, dst: str, seconds: int) -> float:
    out = subprocess.run(["iperf3", "-c", dst, "-p", str(IPERF_PORT), "-t", str(seconds), "-J"],
                         capture_output=True, text=True, check=True, timeout=seconds + 30,
                         preexec_fn=_join(cgroup)).stdout
    return json.loads(out)["end"]["sum_received"]["bits_per_second"] / 1e9


def main() -> None:
    args = round_args(__doc__)
    dc_logging.setup()  # logs to stderr: stdout carries only the figures
    base = private_bpf_base()
    pin_root = defaults.bpf_pin_root(base)
    links = defaults.socketlb_links_dir(base)
    objdir = tempfile.mkdtemp(prefix="dcbench-bpf-")
    mnt = tempfile.mkdtemp(prefix="dcbench-cgroup2-")
    cgroup = os.path.join(mnt, f"dcbench-{os.getpid()}")
    topo = Topology(str(NETTOOL))
    dp = Datapath.load(compile_datapath(out_dir=objdir), pin_root=pin_root)
    lb = SocketLB.load(compile_datapath(out_dir=objdir, source=SOURCE), pin_root)
    servers: list[subprocess.Popen] = []
    try:
        with contextlib.redirect_stdout(sys.stderr):
            a, _b, _c = make_abc(topo, dp)
        ensure_cgroup2(mnt)
        os.mkdir(cgroup)
        lb.attach(cgroup, links)
        vip, _vip6 = topo.blackhole(60)
        assert dp.maps is not None
        dp.maps.lb.upsert_service(1, L4Addr(vip, IPERF_PORT), [(1, L4Addr(a.ipv4, IPERF_PORT))])
        dp.maps.lb.upsert_service(2, L4Addr(vip, CONN_PORT), [(2, L4Addr(a.ipv4, CONN_PORT))])
        servers.append(subprocess.Popen(["ip", "netns", "exec", a.netns, "iperf3", "-s", "-p", str(IPERF_PORT)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        srv = subprocess.Popen(["ip", "netns", "exec", a.netns, PYTHON, "-c", SERVER, str(CONN_PORT)],
                               stdout=subprocess.PIPE, text=True)
        servers.append(srv)
        assert srv.stdout is not None and srv.stdout.readline().strip() == "ready"
        time.sleep(0.5)
        targets = {"direct": a.ipv4, "vip": vip}
        rate: dict[str, list[float]] = {m: [] for m in targets}
        gbit: dict[str, list[float]] = {m: [] for m in targets}
        stats = ProgStats(lb.programs["cil_sock4_connect"][0])
        hook_ns: list[float] = []
        try:
            for _ in range(args.rounds):
                for mode, dst in targets.items():
                    ns0, runs0 = stats.read()
                    rate[mode].append(conn_rate(cgroup, dst, args.seconds))
                    ns1, runs1 = stats.read()
                    if mode == "vip":
                        hook_ns.append((ns1 - ns0) / max(1, runs1 - runs0))
                    gbit[mode].append(iperf(cgroup, dst, args.seconds))
        finally:
            stats.close()
        med_rate = {m: statistics.median(v) for m, v in rate.items()}
        med_gbit = {m: statistics.median(v) for m, v in gbit.items()}
        print(json.dumps({
            "seconds_per_run": args.seconds, "rounds": args.rounds,
            "connections_per_s_median": {m: round(v) for m, v in med_rate.items()},
            "conn_rate_vip_over_direct": round(med_rate["vip"] / med_rate["direct"], 3),
            "gbit_s_median": {m: round(v, 2) for m, v in med_gbit.items()},
            "throughput_vip_over_direct": round(med_gbit["vip"] / med_gbit["direct"], 3),
            "connect4_hook_ns_per_call_median": round(statistics.median(hook_ns)),
            "runs": {"connections_per_s": {m: [round(x) for x in v] for m, v in rate.items()},
                     "gbit_s": {m: [round(x, 2) for x in v] for m, v in gbit.items()}},
            "figures": [
                figure("host->service conn/s, socket LB VIP / direct", med_rate["vip"] / med_rate["direct"], "x",
                       baseline="direct", rounds=ratios(rate["vip"], rate["direct"]),
                       absolute=f"vip {spread(rate['vip'], 'conn/s', 0)}, direct {spread(rate['direct'], '', 0)}"),
                figure("host->service TCP, socket LB VIP / direct", med_gbit["vip"] / med_gbit["direct"], "x",
                       baseline="direct", rounds=ratios(gbit["vip"], gbit["direct"]),
                       absolute=f"vip {spread(gbit['vip'], 'Gbit/s')}, direct {spread(gbit['direct'])}"),
                figure("connect4 hook time per translated connect", statistics.median(hook_ns), "ns",
                       rounds=hook_ns, digits=0, absolute=spread(hook_ns, "ns", 0)),
            ],
        }, indent=2))
    finally:
        for p in servers:
            p.kill()
            p.wait()
        lb.close()
        detach(links)
        dp.close()
        errors = topo.cleanup()
        unpin_all(pin_root)
        for dirpath, _dirs, files in os.walk(base, topdown=False):
            for f in files:
                os.unlink(os.path.join(dirpath, f))
            os.rmdir(dirpath)
        for _ in range(50):
            try:
                if os.path.isdir(cgroup):
                    os.rmdir(cgroup)
                break
            except OSError:
                time.sleep(0.1)
        libc = ctypes.CDLL(None, use_errno=True)
        if os.path.ismount(mnt):
            libc.umount2(mnt.encode(), 0)
        os.rmdir(mnt)
        if errors:
            raise SystemExit(f"cleanup errors: {errors}")


if __name__ == "__main__":
    main()
