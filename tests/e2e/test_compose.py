"""compose/: etcd and the agent as containers, the handbook's apps on
cilium-net, the l3 policy imported from beside the compose file."""

from __future__ import annotations

import os

import pytest

from tests.e2e.conftest import iptables_leaks
from tests.e2e.shipenv import COMPOSE_DIR, ComposeEnv, reaches
from tests.helpers import wait_until


@pytest.fixture
def compose_env(agent_image):
    env = ComposeEnv("compose")
    try:
        yield env
    finally:
        env.down()
    assert iptables_leaks() == [], "the compose agent left iptables rules behind"


def test_compose_env_enforces_handbook_l3_policy(compose_env):
    env = compose_env
    env.up()
    app1, app2, app3 = (env.container(s) for s in ("app1", "app2", "app3"))
    ip1, ip1v6 = env.address("app1"), env.address("app1", "GlobalIPv6Address")
    assert ip1 and ip1v6.startswith("f00d:"), (ip1, ip1v6)

    # The agent in the container runs on etcd and knows the three apps by label.
    status = env.dirs.cli("status").stdout
    assert "KVStore:" in status and "etcd" in status, status
    # Its maps are pinned in the host's bpffs (bind-mounted), where they outlive the container.
    assert "cilium_lxc" in os.listdir(os.path.join(env.dirs.bpf_root, "tc", "globals"))

    def labelled():
        eps = env.dirs.cli("endpoint", "list").stdout
        return all(f"container:id=app{i}" in eps for i in (1, 2, 3)) and eps.count("ready") >= 3
    wait_until(labelled, what="app1..app3 endpoints ready with their labels")

    assert reaches(app2, ip1) and reaches(app3, ip1), "without policy every app reaches app1"

    # The README's way without a host CLI: the image's own `cilium`, the file on stdin.
    policy = (COMPOSE_DIR / "demo" / "l3-rule.json").read_text()
    out = env.compose("agent", "exec", "-T", "cilium", "cilium", "-H", env.dirs.api_socket, "policy", "import", "-",
                      input=policy).stdout
    assert out.strip().startswith("Revision:"), out
    env.dirs.cli("policy", "wait", out.split()[-1])

    assert reaches(app2, ip1) and reaches(app2, ip1v6)
    assert not reaches(app3, ip1) and not reaches(app3, ip1v6)
