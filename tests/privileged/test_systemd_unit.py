"""`systemd-analyze verify` on the agent's unit (contrib/systemd/cilium.service).

verify checks that ExecStart's binary exists; `make install` links it at
/usr/local/bin/cilium-agent. So that the check does not depend on what is
installed on this machine, it runs in a private mount namespace where a tmpfs
on /usr/local/bin holds only that link, to this tree's agent.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.helpers import ROOT, VENV_BIN, require_root, require_tool

UNIT = ROOT / "contrib" / "systemd" / "cilium.service"


def verify(unit_path) -> subprocess.CompletedProcess:
    require_root()
    require_tool("unshare")
    analyze = require_tool("systemd-analyze")
    script = ('mount -t tmpfs tmpfs /usr/local/bin && ln -s "$1" /usr/local/bin/cilium-agent '
              '&& exec "$2" verify "$3"')
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
                           str(VENV_BIN / "cilium-agent"), analyze, str(unit_path)],
                          capture_output=True, text=True, timeout=60)


def test_unit_verifies():
    res = verify(UNIT)
    # verify exits 0 on many problems it only warns about: any output is a finding.
    assert res.returncode == 0 and res.stdout == "" and res.stderr == "", res.stdout + res.stderr


def test_verify_reports_a_broken_unit(tmp_path):
    """The check above can fail: a wrong Type= and a missing binary are both reported."""
    broken = tmp_path / "cilium.service"
    broken.write_text(UNIT.read_text().replace("Type=notify", "Type=notifyy")
                      .replace("/usr/local/bin/cilium-agent", "/usr/local/bin/no-such-agent"))
    res = verify(broken)
    out = res.stdout + res.stderr
    assert "notifyy" in out and "no-such-agent" in out, out
