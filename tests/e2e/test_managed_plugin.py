"""plugin/config.json + `make plugin`: the agent as a managed (v2) Docker
plugin, created, configured with `docker plugin set`, enabled, serving a
network (its own IPAM) whose containers get the handbook's policy enforced."""

from __future__ import annotations

import json
import os

import pytest

from tests.e2e.conftest import TEST_LABEL, cleanup_docker, iptables_leaks, net_settings
from tests.e2e.shipenv import ROOT, PluginEnv, reaches
from tests.helpers import docker, wait_until


@pytest.fixture
def plugin(agent_image, names):
    env = PluginEnv("plugin")
    try:
        yield env
    finally:
        cleanup_docker()  # containers and networks first: a plugin in use cannot be removed
        env.remove()
    assert iptables_leaks() == [], "the plugin's agent left iptables rules behind"


def test_managed_plugin_serves_network_with_policy(plugin, names):
    plugin.create()
    assert plugin.inspect("{{.Enabled}}") == "false"
    config = json.loads(plugin.inspect("{{json .Config}}"))
    assert config["Interface"]["Types"] == ["docker.networkdriver/1.0", "docker.ipamdriver/1.0"]
    assert config["Network"]["Type"] == "host"

    plugin.enable()
    assert plugin.inspect("{{.Enabled}}") == "true"
    # `docker plugin set` reached the agent: its API socket is in the private run dir.
    wait_until(lambda: os.path.exists(plugin.dirs.api_socket), what="the plugin agent's API socket")
    assert "etcd" not in plugin.dirs.cli("status").stdout
    # ... and CILIUM_BPF_ROOT too: the maps are pinned in the host's bpffs under it.
    assert "cilium_lxc" in os.listdir(os.path.join(plugin.dirs.bpf_root, "tc", "globals"))

    net = names("plugin-net")
    docker("network", "create", "--label", TEST_LABEL, "--ipv6", "--subnet", "::1/112",
           "-d", plugin.name, "--ipam-driver", plugin.name, net)
    apps = {}
    for app, cmd in (("app1", ("httpd", "-f", "-p", "80", "-h", "/var/www")), ("app2", ("sleep", "1d")),
                     ("app3", ("sleep", "1d"))):
        apps[app] = docker("run", "-d", "--name", names(app), "--label", TEST_LABEL, "-l", f"id={app}",
                           "--net", net, "busybox", *cmd).stdout.strip()
    s1 = net_settings(apps["app1"], net)
    ip1, ip1v6 = s1["IPAddress"], s1["GlobalIPv6Address"]
    assert s1["IPPrefixLen"] == 32 and ip1v6.startswith("f00d:"), s1  # the plugin's own IPAM

    wait_until(lambda: plugin.dirs.cli("endpoint", "list").stdout.count("ready") >= 3, what="three endpoints ready")
    assert reaches(apps["app2"], ip1) and reaches(apps["app3"], ip1)

    out = plugin.dirs.cli("policy", "import", str(ROOT / "compose" / "demo" / "l3-rule.json")).stdout
    plugin.dirs.cli("policy", "wait", out.split()[-1])
    assert reaches(apps["app2"], ip1) and reaches(apps["app2"], ip1v6)
    assert not reaches(apps["app3"], ip1) and not reaches(apps["app3"], ip1v6)
