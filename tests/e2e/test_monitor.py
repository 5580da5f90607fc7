"""`cilium monitor` against a real agent, real dockerd and real BPF drops:
the handbook's l3 demo seen live by two monitors at once (drops, and app2's
allowed connection as a policy verdict), while a client that never reads
its stream stalls neither the agent nor them."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path

from tests.e2e.conftest import exec_, net_settings
from tests.e2e.test_policy_demo import POLICY, l3_demo_apps, reaches
from tests.helpers import VENV_BIN, wait_until


def start_monitor(agent, out: Path, *args: str) -> subprocess.Popen:
    """A `cilium monitor` writing to the file ``out``: a pipe nobody reads
    until the end would fill (64 KiB) and stop the monitor reading its stream."""
    with open(out, "wb") as sink:
        return subprocess.Popen([str(VENV_BIN / "cilium"), "-H", agent.api_socket, "monitor", *args],
                                stdout=sink, stderr=subprocess.DEVNULL)


def echo_drops(out: Path, src: str, dst: str) -> list[dict]:
    """The -j drop events of ICMP echo requests src -> dst written to ``out``
    so far (a last line still being written is left out)."""
    events = [json.loads(line) for line in out.read_text().splitlines(keepends=True) if line.endswith("\n")]
    return [e for e in events if e["type"] == "drop" and e.get("summaryText", "").endswith("EchoRequest")
            and e["summary"]["l3"] == {"src": src, "dst": dst}]


def stop(proc: subprocess.Popen, out: Path) -> str:
    proc.terminate()
    proc.wait(timeout=10)
    return out.read_text()


def test_monitor_shows_l3_demo_drops_to_two_monitors_while_one_never_reads(agent, names, tmp_path):
    net, (app1, app2, app3), (ep1, ep2, ep3) = l3_demo_apps(agent, names)
    ip1 = net_settings(app1, net)["IPAddress"]
    ip2 = net_settings(app2, net)["IPAddress"]
    ip3 = net_settings(app3, net)["IPAddress"]
    agent.cli("policy", "import", str(POLICY))

    stalled = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.connect(agent.api_socket)
    stalled.sendall(b"GET /v1/monitor HTTP/1.1\r\nHost: localhost\r\n\r\n")  # and never reads
    files = [tmp_path / name for name in ("text", "j1", "j2", "verdicts")]
    text = start_monitor(agent, files[0], "--type", "drop")
    j1 = start_monitor(agent, files[1], "-j")
    j2 = start_monitor(agent, files[2], "-j", "--related-to", str(ep1["id"]))
    verdicts = start_monitor(agent, files[3], "--type", "policy-verdict", "-j")
    try:
        wait_until(lambda: agent.cli_json("status")["nodeMonitor"]["subscribers"] == 5, what="5 monitors attached")
        assert not reaches(app3, ip1)
        assert reaches(app2, ip1)
        # A flood of denied pings: thousands of drop events through all five streams.
        t0 = time.monotonic()
        ping = exec_(app3, "ping", "-q", "-c", "3000", "-i", "0.001", "-W", "1", ip1, check=False, timeout=120)
        assert "3000 packets transmitted, 0 packets received" in ping.stdout, ping.stdout + ping.stderr
        flood = time.monotonic() - t0
        t0 = time.monotonic()
        agent.cli("endpoint", "list")
        api_latency = time.monotonic() - t0
        # Every monitor that reads sees every one of them (the agent does not wait for it);
        # a lost record ends the wait at once (asserted below).
        wait_until(lambda: all(len(echo_drops(f, ip3, ip1)) >= 3000 for f in files[1:3])
                   or any('"type":"lost"' in f.read_text() for f in files[1:3]),
                   timeout=60, what="3000 echo drops on both -j monitors")
        caught_up = time.monotonic() - t0
    finally:
        out_text, out1, out2, out_pv = (stop(p, f) for p, f in zip((text, j1, j2, verdicts), files))
        stalled.close()

    drop_lines = [line for line in out_text.splitlines() if line.startswith("xx drop")]
    want = ("xx drop (Policy denied (L3)) flow ", f"to endpoint {ep1['id']}",
            f"identity {ep3['identity']['id']}->{ep1['identity']['id']}: {ip3} -> {ip1}")
    assert any(all(w in line for w in want) for line in drop_lines), out_text[:3000]
    ev1 = [json.loads(line) for line in out1.splitlines()]  # every -j line parses
    ev2 = [json.loads(line) for line in out2.splitlines()]
    lost = [e for e in ev1 + ev2 if e["type"] == "lost"]
    assert not lost, f"a reading monitor lost events: {lost[:4]}"
    echo = [e for e in ev1 if e["type"] == "drop" and e.get("summaryText", "").endswith("EchoRequest")
            and e["summary"]["l3"] == {"src": ip3, "dst": ip1}]
    assert len(echo) == 3000
    assert all(e["srcLabels"] == [*e["srcLabels"]] and "container:id=app3" in e["srcLabels"] for e in echo)
    # Both monitors saw the same events (j2 filters on app1's endpoint: all of these concern it).
    key = lambda e: (e["type"], e["mark"], e["time"], e.get("summaryText"))  # noqa: E731
    echo_keys = {key(e) for e in echo}
    assert [key(e) for e in ev2 if e["type"] == "drop" and key(e) in echo_keys] == [key(e) for e in echo]
    # app2's allowed connection to app1, as app1's ingress policy verdict (and only verdicts on that stream).
    pv = [json.loads(line) for line in out_pv.splitlines()]
    assert pv and all(e["type"] == "policy-verdict" for e in pv), out_pv[:2000]
    allowed = [e for e in pv if e["verdict"] == "ALLOWED" and e["direction"] == "ingress"
               and e["dstID"] == ep1["id"] and e["remoteLabel"] == ep2["identity"]["id"]
               and e.get("summary", {}).get("l3") == {"src": ip2, "dst": ip1}]
    assert allowed, pv[:5]
    assert allowed[0]["match"] != "none" and "container:id=app2" in allowed[0].get("srcLabels", [])
    assert any(e["verdict"] == "DENIED" and e["remoteLabel"] == ep3["identity"]["id"] for e in pv), pv[:5]
    assert api_latency < 2.0, f"the API took {api_latency:.2f}s while the monitors streamed"
    assert len(drop_lines) >= 3000
    print(f"flood of 3000 drops in {flood:.1f}s, all on the monitors after {caught_up:.1f}s; "
          f"API latency {api_latency:.3f}s")
