"""The socket LB's agent flags and what `cilium cleanup` counts as its pins (no kernel needed)."""

from __future__ import annotations

import os

import pytest
from click.testing import CliRunner

from docker_cilium import defaults
from docker_cilium.agent import main as agent_main
from docker_cilium.datapath import cleanup
from docker_cilium.datapath.maps import socklb
from docker_cilium.datapath.socketlb import PROGRAMS


@pytest.mark.parametrize("args,enabled,root", [
    ([], True, "/run/cilium/cgroupv2"),
    (["--bpf-lb-sock=false"], False, "/run/cilium/cgroupv2"),
    (["--bpf-lb-sock", "true", "--cgroup-root", "/sys/fs/cgroup/unified"], True, "/sys/fs/cgroup/unified"),
])
def test_agent_flags(monkeypatch, args, enabled, root):
    started = []

    async def fake_run(config):
        started.append(config)
    monkeypatch.setattr(agent_main, "_run", fake_run)
    res = CliRunner().invoke(agent_main.main, args)
    assert res.exit_code == 0, res.output
    assert (started[0].bpf_lb_sock, started[0].cgroup_root) == (enabled, root)


def test_agent_flag_refuses_a_non_boolean(monkeypatch):
    monkeypatch.setattr(agent_main, "_run", lambda config: pytest.fail("started"))
    res = CliRunner().invoke(agent_main.main, ["--bpf-lb-sock", "sometimes"])
    assert res.exit_code == 2 and "--bpf-lb-sock" in res.output and "not a valid boolean" in res.output


def test_links_dir_under_the_bpf_root():
    assert defaults.socketlb_links_dir("/sys/fs/bpf") == "/sys/fs/bpf/cilium/socketlb/links/cgroup"


def test_cleanup_lists_socket_lb_pins_and_nothing_else(tmp_path):
    root = str(tmp_path)
    pin_root, prog_dir = defaults.bpf_pin_root(root), defaults.bpf_prog_dir(root)
    links = defaults.socketlb_links_dir(root)
    for d in (pin_root, prog_dir, links):
        os.makedirs(d)
    for name in [*socklb.MAP_TYPES, "someone_elses_map"]:
        open(os.path.join(pin_root, name), "w").close()
    for name in [*PROGRAMS, "cil_sock4_connect_new", "not_ours"]:
        open(os.path.join(links, name), "w").close()
    found = {os.path.relpath(p, root) for p in cleanup._pins(pin_root, prog_dir, links)}
    assert found == ({f"tc/globals/{n}" for n in socklb.MAP_TYPES}
                     | {f"cilium/socketlb/links/cgroup/{n}" for n in [*PROGRAMS, "cil_sock4_connect_new"]})


def test_enable_failure_names_the_flag(tmp_path):
    """A cgroup root that cannot be mounted stops the start with a message naming the way out."""
    from docker_cilium.datapath import socketlb

    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    with pytest.raises(OSError, match=r"socket LB \(--bpf-lb-sock\) on cgroup .*file: .*--bpf-lb-sock=false"):
        socketlb.enable(tmp_path / "none.o", str(tmp_path / "pins"), str(tmp_path / "links"), str(not_a_dir))
