"""A network namespace standing in for another machine, linked to the host by
a veth (``dcpf<id>`` on the host, ``eth0`` inside) with its own /30 and /126
in ranges no route on the machine uses: the prefilter tests send from it,
never over the machine's uplink."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

NETTOOL = Path(__file__).with_name("privileged") / "nettool.py"
PYTHON = sys.executable


def sh(*args: str, check: bool = True, timeout: float = 20) -> subprocess.CompletedProcess:
    res = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)
    if check and res.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} -> {res.returncode}: {res.stderr.strip()}")
    return res


class Outside:
    """``dcpf<id>h`` on the host (.1 / ::1 of its /30 and /126) <-> ``eth0`` in
    the namespace (.2 / ::2)."""

    def __init__(self, tag: str) -> None:
        self.id = f"{os.getpid() % 0xFFFF:04x}{tag}{random.randrange(0x100):02x}"
        self.ns = f"dctest-{os.getpid()}-pf{self.id}-o"
        self.host_if = f"dcpf{self.id}"
        used = sh("ip", "-4", "route", "show", "table", "all").stdout + sh("ip", "-4", "addr").stdout
        octet = next(o for o in random.sample(range(100, 250), 150) if f"10.198.{o}." not in used)
        self.host4, self.ns4 = f"10.198.{octet}.1", f"10.198.{octet}.2"
        self.host6, self.ns6 = f"fd98::{octet:x}:1", f"fd98::{octet:x}:2"
        sh("ip", "netns", "add", self.ns)
        try:
            sh("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", "eth0", "netns", self.ns)
            sh("ip", "addr", "add", f"{self.host4}/30", "dev", self.host_if)
            sh("ip", "-6", "addr", "add", f"{self.host6}/126", "dev", self.host_if, "nodad")
            sh("ip", "link", "set", self.host_if, "up")
            nse = ("ip", "netns", "exec", self.ns)
            sh(*nse, "ip", "addr", "add", f"{self.ns4}/30", "dev", "eth0")
            sh(*nse, "ip", "-6", "addr", "add", f"{self.ns6}/126", "dev", "eth0", "nodad")
            sh(*nse, "ip", "link", "set", "eth0", "up")
            sh(*nse, "ip", "link", "set", "lo", "up")
        except Exception:
            self.cleanup()
            raise

    def ping(self, dst: str) -> bool:
        return sh("ip", "netns", "exec", self.ns, PYTHON, str(NETTOOL), "ping", dst, "timeout=1",
                  check=False).returncode == 0

    def send_frame(self, frame: bytes, count: int = 1) -> None:
        sh("ip", "netns", "exec", self.ns, PYTHON, str(NETTOOL), "sendframe", frame.hex(), str(count))

    def macs(self) -> tuple[bytes, bytes]:
        host = json.loads(sh("ip", "-j", "link", "show", self.host_if).stdout)[0]["address"]
        inner = json.loads(sh("ip", "netns", "exec", self.ns, "ip", "-j", "link", "show", "eth0").stdout)[0]["address"]
        return bytes.fromhex(host.replace(":", "")), bytes.fromhex(inner.replace(":", ""))

    def cleanup(self) -> None:
        sh("ip", "link", "del", self.host_if, check=False)
        sh("ip", "netns", "del", self.ns, check=False)
