"""The files that ship the agent: the systemd unit and the Vagrantfile, as text.

(`systemd-analyze verify` runs on the unit in tests/privileged/test_systemd_unit.py.)
"""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess

import pytest

from tests.helpers import ROOT

UNIT = ROOT / "contrib" / "systemd" / "cilium.service"
VAGRANTFILE = ROOT / "Vagrantfile"


def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # systemd keys are case-sensitive
    parser.read_string(UNIT.read_text())
    return parser


def test_unit_starts_before_docker_and_reports_readiness():
    u = unit()
    assert "docker.service" in u["Unit"]["Before"].split()
    # Type=notify: "started" means the agent sent READY=1 (after the plugin socket serves),
    # so dockerd, ordered after it, finds the driver when it restarts containers.
    assert u["Service"]["Type"] == "notify"
    # Starting docker (systemctl restart docker) starts the agent too.
    assert set(u["Install"]["WantedBy"].split()) >= {"multi-user.target", "docker.service"}


def test_unit_runs_the_agent_make_install_links():
    exec_start = unit()["Service"]["ExecStart"].split()
    assert exec_start[0] == "/usr/local/bin/cilium-agent"
    install = (ROOT / "scripts" / "install.sh").read_text()
    assert re.search(r'for tool in [^;]*cilium-agent[^;]*; do\s+ln -sfn "\$ROOT/\.venv/bin/\$tool" "/usr/local/bin/\$tool"',
                     install), "install.sh no longer links /usr/local/bin/cilium-agent"
    assert "\nscripts/install-systemd.sh\n" in install


def test_vagrantfile_provisions_with_make_install_then_make_demo():
    text = VAGRANTFILE.read_text()
    assert re.search(r'config\.vm\.box\s*=\s*ENV\.fetch\("DC_VAGRANT_BOX",\s*"debian/\w+64"\)', text)
    assert re.search(r'synced_folder\s+"\.",\s*"/vagrant"', text)
    provision = re.search(r'<<-SHELL\n(.*?)\n\s*SHELL', text, re.S)
    assert provision, "no inline shell provisioner"
    lines = [l.strip() for l in provision.group(1).splitlines() if l.strip() and not l.strip().startswith("#")]
    makes = [l for l in lines if l.startswith("make ")]
    assert makes == ["make install", "make demo"], lines
    assert lines[lines.index("make install") - 1] == "cd /vagrant"
    # No second copy of the install steps: apt-get appears only to get `make` itself.
    assert [re.findall(r"apt-get install (?:-\S+ )*(.*?)[;}]", l) for l in lines if "apt-get install" in l] == [["make"]]
    assert "pip " not in text


def test_vagrantfile_is_valid_ruby():
    ruby = shutil.which("ruby")
    if ruby is None:
        pytest.fail("ruby is not installed: run `sudo make install`")
    res = subprocess.run([ruby, "-c", str(VAGRANTFILE)], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0 and "Syntax OK" in res.stdout, res.stdout + res.stderr


def install_systemd(tmp_path, systemd_running: bool, enabled: bool = False) -> list[str]:
    """Run scripts/install-systemd.sh against scratch dirs; the systemctl calls it made."""
    run_dir, unit_dir, log = tmp_path / "run-systemd", tmp_path / "etc-systemd", tmp_path / "calls"
    unit_dir.mkdir(exist_ok=True)
    if systemd_running:
        run_dir.mkdir(exist_ok=True)
    fake = tmp_path / "systemctl"
    fake.write_text(f'#!/bin/sh\necho "$*" >> {log}\n[ "$1" != is-enabled ] || exit {0 if enabled else 1}\n')
    fake.chmod(0o755)
    env = {"PATH": "/usr/bin:/bin", "SYSTEMD_RUN_DIR": str(run_dir), "UNIT_DIR": str(unit_dir),
           "SYSTEMCTL": str(fake)}
    res = subprocess.run([str(ROOT / "scripts" / "install-systemd.sh")], env=env, capture_output=True, text=True,
                         timeout=30)
    assert res.returncode == 0, res.stderr
    calls = log.read_text().splitlines() if log.exists() else []
    log.unlink(missing_ok=True)
    return calls


def test_install_leaves_hosts_without_systemd_alone(tmp_path):
    assert install_systemd(tmp_path, systemd_running=False) == []
    assert not (tmp_path / "etc-systemd" / "cilium.service").exists()


def test_install_installs_and_enables_the_unit_where_systemd_runs(tmp_path):
    calls = install_systemd(tmp_path, systemd_running=True)
    assert (tmp_path / "etc-systemd" / "cilium.service").read_text() == UNIT.read_text()
    assert calls == ["daemon-reload", "is-enabled --quiet cilium.service", "enable --quiet cilium.service"]
    # Again, unchanged and enabled: no reload, no enable; never started by the install.
    assert install_systemd(tmp_path, systemd_running=True, enabled=True) == ["is-enabled --quiet cilium.service"]
