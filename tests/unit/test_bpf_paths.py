"""The agent and the loader derive BPF paths from one place (docker_cilium.defaults)."""

from __future__ import annotations

import inspect

from docker_cilium import defaults
from docker_cilium.agent.config import DaemonConfig
from docker_cilium.datapath.loader import Datapath, compile_datapath


def test_loader_defaults_are_the_agents_defaults():
    cfg = DaemonConfig()
    dp = Datapath()  # constructing loads nothing
    assert dp.pin_root == defaults.bpf_pin_root(cfg.bpf_root) == "/sys/fs/bpf/tc/globals"
    assert dp.prog_dir == defaults.bpf_prog_dir(cfg.bpf_root) == "/sys/fs/bpf/cilium/progs"
    # compile_datapath() without out_dir caches where the agent does: <state dir>/bpf
    assert inspect.signature(compile_datapath).parameters["out_dir"].default is None
    assert defaults.bpf_object_dir(cfg.state_dir) == defaults.bpf_object_dir() \
        == "/var/run/cilium/state/bpf"


def test_private_bpf_root_keeps_maps_and_programs_under_it():
    root = "/sys/fs/bpf/dctest-1-2"
    pin_root = defaults.bpf_pin_root(root)
    assert pin_root == f"{root}/tc/globals"
    assert defaults.bpf_root_of(pin_root) == root
    assert Datapath(pin_root).prog_dir == defaults.bpf_prog_dir(root) == f"{root}/cilium/progs"

