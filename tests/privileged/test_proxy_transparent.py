"""The proxy's transparent listeners on the real kernel, without our BPF:
iptables TPROXY (the same socket assignment bpf_sk_assign does) steers a
client's connection to 198.51.100.9:80 / [2001:db8::9]:80 in another
namespace to the proxy's port. The proxy must see the ORIGINAL destination
and source, enforce its rule (GET /public allowed, /private denied) and
reach the real server from its own address.

Namespaces: client (cl) -- proxy (px) -- server (sv); everything lives in
the three namespaces, deleted at the end even on failure."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
ROOT = HERE.parent.parent
PORT = 15001
FAMILIES = {
    4: dict(cl="10.251.{n}.1/30", px_cl="10.251.{n}.2/30", px_sv="10.251.{n}.5/30", sv="198.51.100.9/32",
            sv_link="10.251.{n}.6/30", server="198.51.100.9", tables="iptables", mask=32),
    6: dict(cl="fd00:251:{n}::1/64", px_cl="fd00:251:{n}::2/64", px_sv="fd00:252:{n}::1/64", sv="2001:db8::9/128",
            sv_link="fd00:252:{n}::2/64", server="2001:db8::9", tables="ip6tables", mask=128),
}


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, timeout=20)


def addr(spec: str, n: int) -> str:
    return spec.format(n=n)


@pytest.fixture(params=[4, 6])
def net(request):
    fam = request.param
    f = FAMILIES[fam]
    n = os.getpid() % 250
    ns = {k: f"dcl7{k}{os.getpid()}" for k in ("cl", "px", "sv")}
    created: list[str] = []
    try:
        for name in ns.values():
            sh("ip", "netns", "add", name)
            created.append(name)
        x = lambda name, *a: sh("ip", "netns", "exec", ns[name], *a)  # noqa: E731
        sh("ip", "link", "add", "a0", "netns", ns["cl"], "type", "veth", "peer", "b0", "netns", ns["px"])
        sh("ip", "link", "add", "b1", "netns", ns["px"], "type", "veth", "peer", "c0", "netns", ns["sv"])
        v6 = fam == 6
        nodad = ["nodad"] if v6 else []
        for name, dev, a in (("cl", "a0", f["cl"]), ("px", "b0", f["px_cl"]), ("px", "b1", f["px_sv"]),
                             ("sv", "c0", f["sv_link"])):
            x(name, "ip", "addr", "add", addr(a, n), "dev", dev, *nodad)
            x(name, "ip", "link", "set", dev, "up")
            x(name, "ip", "link", "set", "lo", "up")
        x("sv", "ip", "addr", "add", f["sv"], "dev", "lo")
        gw_cl, gw_sv = addr(f["px_cl"], n).split("/")[0], addr(f["px_sv"], n).split("/")[0]
        x("cl", "ip", *(["-6"] if v6 else []), "route", "add", "default", "via", gw_cl)
        x("sv", "ip", *(["-6"] if v6 else []), "route", "add", "default", "via", gw_sv)
        x("px", "ip", *(["-6"] if v6 else []), "route", "add", f"{f['server']}/{f['mask']}", "via",
          addr(f["sv_link"], n).split("/")[0])
        # What the datapath's MARK_MAGIC_TO_PROXY routing does (datapath/marks.py), with TPROXY's assignment.
        ipf = ["-6"] if v6 else ["-4"]
        x("px", "ip", *ipf, "rule", "add", "fwmark", "0x200/0xf00", "lookup", "2004", "pref", "9")
        x("px", "ip", *ipf, "route", "add", "local", "default", "dev", "lo", "table", "2004")
        x("px", f["tables"], "-t", "mangle", "-A", "PREROUTING", "-p", "tcp", "--dport", "80", "-j", "TPROXY",
          "--on-port", str(PORT), "--tproxy-mark", "0x200/0xf00")
        yield fam, ns, f, addr(f["cl"], n).split("/")[0], gw_sv
    finally:
        for name in created:
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


def test_transparent_listener_sees_original_destination_and_enforces(net, tmp_path):
    fam, ns, f, client_ip, proxy_upstream_ip = net
    (tmp_path / "public").write_text("public\n")
    (tmp_path / "private").write_text("private\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    server = subprocess.Popen(["ip", "netns", "exec", ns["sv"], sys.executable, "-m", "http.server", "80",
                               "--bind", f["server"]], cwd=tmp_path, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    proxy = subprocess.Popen(["ip", "netns", "exec", ns["px"], sys.executable, str(HERE / "proxy_tool.py"),
                              str(PORT)], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proxy.stdout is not None and proxy.stdin is not None
        line = ""
        while not line.startswith("READY"):
            line = proxy.stdout.readline()
            assert line, "the proxy process ended"
        assert line.split()[1] == str(PORT)
        host = f"[{f['server']}]" if fam == 6 else f["server"]
        client = (
            "import http.client,sys,time\n"
            "out=[]\n"
            "for path in ('/public','/private'):\n"
            f"  for i in range(5):\n"
            f"    try:\n"
            f"      c=http.client.HTTPConnection('{f['server']}',80,timeout=5); c.request('GET',path); break\n"
            "    except OSError: time.sleep(0.1)\n"
            "  r=c.getresponse(); out.append(f'{r.status}:{r.read().decode()!r}')\n"
            "print(' '.join(out))\n")
        res = subprocess.run(["ip", "netns", "exec", ns["cl"], sys.executable, "-c", client],
                             capture_output=True, text=True, timeout=60)
        assert res.stdout.split() == ["200:'public\\n'", "403:'Access", "denied\\r\\n'"], res.stderr
        proxy.stdin.close()
        proxy.wait(10)
        events = [json.loads(ln) for ln in proxy.stdout.read().splitlines() if ln.startswith("{")]
        verdicts = [(e["l7Type"], e["verdict"], e["http"]["url"], e["http"]["code"]) for e in events]
        assert verdicts == [("Request", "Forwarded", f"http://{host}/public", 0),
                            ("Response", "Forwarded", f"http://{host}/public", 200),
                            ("Request", "Denied", f"http://{host}/private", 403)]
        # getsockname of the accepted socket = the original destination; peer = the original source
        dest = f"[{f['server']}]:80" if fam == 6 else f"{f['server']}:80"
        assert {e["destinationAddr"] for e in events} == {dest}
        assert all(e["sourceAddr"].rsplit(":", 1)[0].strip("[]") == client_ip for e in events)
    finally:
        for p in (proxy, server):
            if p.poll() is None:
                p.kill()
            p.wait(5)
    server_log = server.stderr.read() if server.stderr else ""
    # the server saw only the allowed request, from the proxy's own address (kernel-chosen source)
    assert '"GET /public HTTP/1.1" 200' in server_log and "/private" not in server_log, server_log
    assert proxy_upstream_ip in server_log, server_log
