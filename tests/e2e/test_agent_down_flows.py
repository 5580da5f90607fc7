"""Established flows keep their policy while the agent is down (kill -9) and
across its restart: the same TCP connection, allowed by an L4 rule, carries
data throughout, while the peers the rule does not name stay denied (new
connections and pings) and the allowed peer's new connections still work.
"""

from __future__ import annotations

import json

from tests.e2e.conftest import create_network, exec_, net_settings, run_container
from tests.e2e.test_policy_demo import labelled
from tests.helpers import wait_until

PORT = 7000
POLICY = [{"labels": [{"key": "name", "value": "flows-rule"}],
           "endpointSelector": {"matchLabels": {"id": "srv"}},
           "ingress": [{"fromEndpoints": [{"matchLabels": {"id": "cli"}}],
                        "toPorts": [{"ports": [{"port": str(PORT), "protocol": "TCP"}]}]}]}]
# A persistent echo server, and a client whose connection reads /in (a FIFO
# the shell keeps open) and writes what comes back to /out; it connects again
# only until a connection is up (the first SYNs may meet the init identity).
SERVER = ("nc", "-ll", "-p", str(PORT), "-e", "cat")
CLIENT = "mkfifo /in; exec 3<>/in; until nc -w 2 {ip} {port} </in >/out; do sleep 1; done"


def connects(container: str, ip: str) -> bool:
    """A new TCP connection to the echo server answers."""
    res = exec_(container, "sh", "-c", f"echo hello | timeout 3 nc -w 2 {ip} {PORT}", check=False)
    return res.returncode == 0 and "hello" in res.stdout


class Flow:
    """The client's one long-lived connection: each message must come back on it."""

    def __init__(self, container: str) -> None:
        self.container = container
        self.sent = 0

    def echoes(self) -> bool:
        self.sent += 1
        word = f"msg{self.sent}"
        exec_(self.container, "sh", "-c", f"echo {word} >/in")
        return wait_until(lambda: word in exec_(self.container, "cat", "/out").stdout, timeout=5,
                          what=f"{word} echoed on the established connection")

    def pid(self) -> str:
        return exec_(self.container, "pidof", "nc").stdout.strip()


def test_established_flow_keeps_policy_while_agent_is_down(agent, names, tmp_path):
    net = names("flows")
    create_network(net, "--ipv6", "--subnet", "::1/112", "--driver", "cilium", "--ipam-driver", "cilium")
    srv = run_container(names("srv"), net, "-l", "id=srv", cmd=SERVER)
    other = run_container(names("other"), net, "-l", "id=other")
    for name, label in ((names("srv"), "id=srv"), (names("other"), "id=other")):
        labelled(agent, name, f"container:{label}")
    policy = tmp_path / "flows-rule.json"
    policy.write_text(json.dumps(POLICY))
    agent.cli("policy", "wait", agent.cli("policy", "import", str(policy)).stdout.split()[-1])
    ip = net_settings(srv, net)["IPAddress"]
    cli = run_container(names("cli"), net, "-l", "id=cli", cmd=("sh", "-c", CLIENT.format(ip=ip, port=PORT)))
    labelled(agent, names("cli"), "container:id=cli")

    flow = Flow(cli)
    assert wait_until(flow.echoes, timeout=20, what="the client's connection")
    pid = flow.pid()
    assert not connects(other, ip)

    agent.kill9()
    # Nobody in user space: the same connection keeps flowing, the rule keeps denying.
    for _ in range(3):
        assert flow.echoes()
    assert connects(cli, ip)
    assert not connects(other, ip)
    assert exec_(other, "ping", "-c", "1", "-W", "1", ip, check=False).returncode != 0
    assert flow.pid() == pid, "the client's connection was re-opened"

    # The restarted agent restores the endpoints without cutting the flow or opening the rule.
    agent.start()
    for _ in range(3):
        assert flow.echoes()
    assert flow.pid() == pid
    assert connects(cli, ip) and not connects(other, ip)
