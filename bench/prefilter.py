"""Packets per second the XDP prefilter drops, against the same flood with no prefilter.

A sender in a test namespace (bench/flood.c, compiled here with clang: pktgen
is not built on these machines) floods 60-byte UDP frames to udp/9 of the
host's address on a veth (nobody listens there). Runs of SECONDS each:

* ``none``: no XDP program; every frame goes up the host stack to UDP, which
  counts it in ``Udp NoPorts`` (/proc/net/snmp): the stack's rate;
* ``generic`` / ``native``: the prefilter attached in that mode with the
  sender's /32 denied; what it drops is counted in ``cilium_metrics``
  (Policy denied (CIDR), ingress), and ``NoPorts`` shows what still got through.

Each run also reports the sender's own rate (frames the kernel accepted from
sendmmsg): on a veth the receiving side runs on the sender's CPU, so a
cheaper receive path shows up as a faster sender. The datapath is the
agent's code (``Datapath.load`` + ``xdp.install``) under a private bpf root.

    python -m bench.prefilter [--seconds 5] [--senders 1] [--json]
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import random
import shutil
import subprocess
import tempfile
from pathlib import Path

from bench.common import figure
from docker_cilium import defaults
from docker_cilium import logging as dclog
from docker_cilium.datapath import xdp
from docker_cilium.datapath.drop import DROP_POLICY_CIDR
from docker_cilium.datapath.loader import Datapath, clang_binary, compile_datapath, unpin_all
from docker_cilium.datapath.maps.metricsmap import METRIC_INGRESS
from tests.outside import Outside

HERE = Path(__file__).resolve().parent


def udp_noports() -> int:
    with open("/proc/net/snmp") as f:
        head, values = [line.split() for line in f if line.startswith("Udp:")][:2]
    return int(values[head.index("NoPorts")])


def build_sender(workdir: str) -> str:
    exe = os.path.join(workdir, "flood")
    subprocess.run([clang_binary(), "-O2", "-o", exe, str(HERE / "flood.c")], check=True)
    return exe


def flood(exe: str, outside: Outside, seconds: float, senders: int) -> tuple[int, float]:
    host_mac, ns_mac = (":".join(f"{b:02x}" for b in m) for m in outside.macs())
    procs = [subprocess.Popen(["ip", "netns", "exec", outside.ns, exe, "eth0", host_mac, ns_mac, outside.ns4,
                               outside.host4, str(seconds)], stdout=subprocess.PIPE, text=True)
             for _ in range(senders)]
    sent, elapsed = 0, 0.0
    for p in procs:
        out, _ = p.communicate(timeout=seconds + 30)
        n, t = out.split()
        sent, elapsed = sent + int(n), max(elapsed, float(t))
    return sent, elapsed


def run_mode(mode: str, exe: str, outside: Outside, dp: Datapath, xdp_obj: str, seconds: float,
             senders: int) -> dict:
    assert dp.maps is not None
    if mode != "none":
        xdp.install(xdp_obj, dp.pin_root, dp.prog_dir, outside.host_if, mode)
        dp.maps.prefilter.insert(ipaddress.ip_network(f"{outside.ns4}/32"))
    drops0, stack0 = dp.maps.metrics.count(DROP_POLICY_CIDR, METRIC_INGRESS), udp_noports()
    sent, elapsed = flood(exe, outside, seconds, senders)
    dropped = dp.maps.metrics.count(DROP_POLICY_CIDR, METRIC_INGRESS) - drops0
    to_stack = udp_noports() - stack0
    if mode != "none":
        xdp.remove(dp.prog_dir)
        dp.maps.prefilter.delete(ipaddress.ip_network(f"{outside.ns4}/32"))
    return {"mode": mode, "seconds": round(elapsed, 3), "sender_pps": round(sent / elapsed),
            "dropped_pps": round(dropped / elapsed), "stack_pps": round(to_stack / elapsed),
            "sent": sent, "dropped": dropped, "reached_stack": to_stack}


def prefilter_figures(results: list[dict]) -> list[dict]:
    """Frames/s each XDP mode dropped, against what the stack took with no
    prefilter (the ratio: how much more the prefilter stops than the stack
    could even see)."""
    by = {r["mode"]: r for r in results}
    base = by.get("none")
    out = []
    for mode in ("generic", "native"):
        r = by.get(mode)
        if r is None:
            continue
        if base and base["stack_pps"]:
            out.append(figure(f"XDP prefilter drops ({mode}) / stack rate without it",
                              r["dropped_pps"] / base["stack_pps"], "x", baseline="no prefilter",
                              absolute=f"{r['dropped_pps']:,} pps dropped, stack {base['stack_pps']:,} pps "
                                       "without prefilter"))
        else:
            out.append(figure(f"XDP prefilter drops ({mode})", r["dropped_pps"], "pps", digits=0,
                              absolute=f"{r['dropped_pps']:,} pps dropped"))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--senders", type=int, default=1)
    ap.add_argument("--modes", default="none,generic,native")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    dclog.setup(fmt="text", quiet=True)  # stdout is the figures (JSON for bench/run.py)
    workdir = tempfile.mkdtemp(prefix="dcbench-prefilter-")
    base = os.path.join(defaults.BPFFS_ROOT, f"dcbench-{os.getpid()}-{random.randrange(1 << 30):x}")
    outside = Outside("z")
    dp = None
    try:
        exe = build_sender(workdir)
        dp = Datapath.load(compile_datapath(out_dir=workdir), pin_root=defaults.bpf_pin_root(base))
        xdp_obj = str(compile_datapath(out_dir=workdir, source=xdp.XDP_SOURCE))
        results = [run_mode(m, exe, outside, dp, xdp_obj, args.seconds, args.senders)
                   for m in args.modes.split(",")]
    finally:
        outside.cleanup()
        if dp is not None:
            xdp.remove(dp.prog_dir)
            dp.close()
            unpin_all(dp.pin_root)
        if os.path.isdir(base):
            for dirpath, _dirs, files in os.walk(base, topdown=False):
                for f in files:
                    os.unlink(os.path.join(dirpath, f))
                os.rmdir(dirpath)
        shutil.rmtree(workdir, ignore_errors=True)
    out = {"senders": args.senders, "frame_bytes": 60, "runs": results, "figures": prefilter_figures(results)}
    if args.json:
        print(json.dumps(out))
        return
    print(f"{'MODE':<8} {'SENDER pps':>12} {'DROPPED pps':>12} {'TO STACK pps':>13}  ({args.senders} sender(s), "
          f"60-byte UDP frames, {args.seconds:g} s each)")
    for r in results:
        print(f"{r['mode']:<8} {r['sender_pps']:>12,} {r['dropped_pps']:>12,} {r['stack_pps']:>13,}")


if __name__ == "__main__":
    main()
