"""The handbook's Docker demo: app1/app2/app3 and the l3-rule, with real packets."""

from __future__ import annotations

from pathlib import Path

from tests.e2e.conftest import create_network, exec_, net_settings, run_container
from tests.helpers import docker, wait_until

POLICY = Path(__file__).parent.parent / "fixtures" / "policies" / "l3-rule.json"
# app1 serves HTTP on 80 and on a second port, to show that only 80 is opened.
APP1 = ("sh", "-c", "httpd -p 8080 -h /var/www; exec httpd -f -p 80 -h /var/www")


def reaches(container: str, ip: str, port: int = 80) -> bool:
    host = f"[{ip}]" if ":" in ip else ip
    res = exec_(container, "timeout", "3", "wget", "-q", "-O", "-", f"http://{host}:{port}/", check=False, timeout=20)
    return res.returncode == 0 and "docker-cilium" in res.stdout


def labelled(agent, name: str, label: str) -> dict:
    def check():
        for ep in agent.cli_json("endpoint", "list"):
            if ep["container-name"] == name and label in ep["labels"]["orchestration-identity"] \
                    and ep["identity"]["id"] >= 256 and ep["state"] == "ready":
                return ep
        return None
    return wait_until(check, what=f"{name} labelled {label} with an identity")


def l3_demo_apps(agent, names) -> tuple[str, list[str], list[dict]]:
    """The handbook's set-up: cilium-net, app1 serving, app2 and app3 idle;
    (network, [app1, app2, app3] container IDs, their endpoints once labelled)."""
    net = names("cilium-net")
    create_network(net, "--ipv6", "--subnet", "::1/112", "--driver", "cilium", "--ipam-driver", "cilium")
    apps = [run_container(names("app1"), net, "-l", "id=app1", cmd=APP1),
            run_container(names("app2"), net, "-l", "id=app2"),
            run_container(names("app3"), net, "-l", "id=app3")]
    eps = [labelled(agent, names(f"app{i}"), f"container:id=app{i}") for i in (1, 2, 3)]
    return net, apps, eps


def test_handbook_l3_demo(agent, names):
    net, (app1, app2, app3), (ep1, _, _) = l3_demo_apps(agent, names)
    s1 = net_settings(app1, net)
    ip1, ip1v6 = s1["IPAddress"], s1["GlobalIPv6Address"]
    ip3 = net_settings(app3, net)["IPAddress"]

    # Without policy everyone reaches app1.
    assert reaches(app2, ip1) and reaches(app3, ip1) and reaches(app3, ip1, 8080)

    out = agent.cli("policy", "import", str(POLICY)).stdout
    assert out.strip().startswith("Revision:")
    rev = int(out.split()[-1])

    assert reaches(app2, ip1)
    assert reaches(app2, ip1v6)
    assert not reaches(app3, ip1)
    assert not reaches(app3, ip1v6)
    assert not reaches(app2, ip1, 8080)  # L4: only port 80
    assert exec_(app2, "ping", "-c", "1", "-W", "1", ip1, check=False).returncode != 0
    # app1's own egress is untouched.
    assert exec_(app1, "ping", "-c", "1", "-W", "2", ip3, check=False).returncode == 0

    # A container started later with id=app3 is denied from its first packet.
    # (wget must not be PID 1: `timeout`'s SIGTERM would be ignored by init.)
    # Its network works (it reaches app3, which no rule selects); only app1 is closed to it.
    late = docker("run", "--rm", "--label", "docker-cilium-test=1", "-l", "id=app3", "--net", net, "busybox",
                  "sh", "-c", f"timeout 3 wget -q -O - http://{ip1}/; echo rc=$?; "
                              f"ping -c 1 -W 2 {ip3} >/dev/null; echo ping=$?", check=False)
    assert "rc=" in late.stdout and "rc=0" not in late.stdout, late.stdout + late.stderr
    assert "ping=0" in late.stdout, late.stdout + late.stderr

    listing = agent.cli_json("endpoint", "list")
    e1 = next(e for e in listing if e["id"] == ep1["id"])
    assert e1["policy"]["ingress-enforced"] is True and e1["policy"]["egress-enforced"] is False
    assert e1["policy"]["revision"] >= rev
    table = agent.cli("endpoint", "list").stdout
    row = next(line for line in table.splitlines() if line.split()[:1] == [str(ep1["id"])])
    assert row.split()[1:3] == ["Enabled", "Disabled"]

    # The real pinned maps, read directly as Cilium's `cilium bpf` does.
    bpf = agent.cli("bpf", "policy", "get", str(ep1["id"])).stdout
    row80 = next(line for line in bpf.splitlines() if "80/TCP" in line)
    assert "container:id=app2" in bpf and int(row80.split()[-1]) > 0  # packets counted
    ct = agent.cli("bpf", "ct", "list", "global").stdout
    assert f"-> {ip1}:80" in ct
    assert ip1 in agent.cli("bpf", "endpoint", "list").stdout
    ipc = agent.cli("bpf", "ipcache", "list").stdout
    assert any(line.split()[:2] == [f"{ip1}/32", str(ep1["identity"]["id"])] for line in ipc.splitlines())

    # kill -9: the kernel keeps enforcing with nobody in user space...
    agent.kill9()
    assert reaches(app2, ip1) and not reaches(app3, ip1) and not reaches(app2, ip1, 8080)
    # ... and the restarted agent restores the same policy, revision and identities.
    agent.start()
    assert agent.cli("policy", "get").stdout.strip().endswith(f"Revision: {rev}")
    after = {e["container-name"]: e for e in agent.cli_json("endpoint", "list")}
    assert after[names("app1")]["identity"]["id"] == ep1["identity"]["id"]
    assert after[names("app1")]["policy"]["ingress-enforced"] is True
    assert reaches(app2, ip1) and not reaches(app3, ip1)

    agent.cli("policy", "delete", "name=l3-rule")
    assert reaches(app3, ip1)
    assert reaches(app2, ip1, 8080)
