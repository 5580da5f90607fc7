"""L7 HTTP policy on real dockerd: Cilium's Docker-guide L7 demo, Cilium's
``l7/http/http.json`` example as written, an egress L7 rule, and an L7 policy
replaced by an L4-only one, with real packets steered by BPF to the agent's
proxy."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from tests.e2e.conftest import create_network, exec_, net_settings, run_container
from tests.e2e.l7http import allowed, denied_by_proxy, echo_server, request
from tests.e2e.test_policy_demo import labelled
from tests.helpers import VENV_BIN, wait_until

POLICIES = Path(__file__).parent.parent / "fixtures" / "cilium-examples" / "policies"
DOCKER_GUIDE_L7 = POLICIES / "getting-started" / "cilium_dkr_demo_l7-policy-230817.json"
HTTP_EXAMPLE = POLICIES / "l7" / "http" / "http.json"
L3_RULE = Path(__file__).parent.parent / "fixtures" / "policies" / "l3-rule.json"


def import_policy(agent, path: Path | str) -> int:
    out = agent.cli("policy", "import", str(path)).stdout
    return int(out.split()[-1])


def proxy_port_of(agent, ep_id: int, port: str = "80/TCP") -> str:
    """The PROXY PORT column of the endpoint's ``port`` row in ``cilium bpf policy get``."""
    rows = [line.split() for line in agent.cli("bpf", "policy", "get", str(ep_id)).stdout.splitlines()]
    row = next(r for r in rows if port in r)
    return row[row.index(port) + 1]


def server_and_client(agent, names, server_label: str | None, client_label: str | None):
    """cilium-net with a server and a client container, each labelled (when a
    label is given) and known to the agent with its identity; returns
    (server, client, server IPv4, server IPv6)."""
    net = names("cilium-net")
    create_network(net, "--ipv6", "--subnet", "::1/112", "--driver", "cilium", "--ipam-driver", "cilium")
    srv = run_container(names("srv"), net, *(("-l", server_label) if server_label else ()))
    cli = run_container(names("cli"), net, *(("-l", client_label) if client_label else ()))
    for name, label in (("srv", server_label), ("cli", client_label)):
        if label:
            labelled(agent, names(name), f"container:{label}")
    s = net_settings(srv, net)
    return srv, cli, s["IPAddress"], s["GlobalIPv6Address"]


def test_docker_guide_l7_demo(agent, names):
    net = names("cilium-net")
    create_network(net, "--ipv6", "--subnet", "::1/112", "--driver", "cilium", "--ipam-driver", "cilium")
    app1 = run_container(names("app1"), net, "-l", "id=app1")
    app2 = run_container(names("app2"), net, "-l", "id=app2")
    app3 = run_container(names("app3"), net, "-l", "id=app3")
    ep1, _, _ = (labelled(agent, names(f"app{i}"), f"container:id=app{i}") for i in (1, 2, 3))
    s1, s2 = net_settings(app1, net), net_settings(app2, net)
    ip1, ip1v6, ip2 = s1["IPAddress"], s1["GlobalIPv6Address"], s2["IPAddress"]

    with echo_server(app1):
        assert allowed(request(app2, "GET", ip1, "/private"))
        assert allowed(request(app3, "GET", ip1, "/public"))

        import_policy(agent, DOCKER_GUIDE_L7)
        # app2 may GET /public and nothing else, over IPv4 and IPv6
        res = request(app2, "GET", ip1, "/public")
        assert allowed(res), res
        assert ip2 not in res["body"], "the proxy, not app2, connects to app1"
        assert allowed(request(app2, "GET", ip1v6, "/public"))
        assert denied_by_proxy(request(app2, "GET", ip1, "/private"))
        assert denied_by_proxy(request(app2, "POST", ip1, "/public", body="x"))
        assert denied_by_proxy(request(app2, "GET", ip1v6, "/private"))
        # app3 stays denied at L3/L4: no answer at all, not the proxy's 403
        res = request(app3, "GET", ip1, "/public")
        assert "error" in res, res
        # the guide's own client, busybox wget
        assert "GET /public" in exec_(app2, "timeout", "5", "wget", "-q", "-O", "-", f"http://{ip1}/public").stdout
        priv = exec_(app2, "timeout", "5", "wget", "-q", "-O", "-", f"http://{ip1}/private", check=False)
        assert priv.returncode != 0 and "403" in priv.stderr, priv.stderr

        port = proxy_port_of(agent, ep1["id"])
        assert port.isdigit() and 10000 <= int(port) <= 20000, port
        status = agent.cli("status").stdout
        assert "Proxy Status:" in status and "OK" in status.split("Proxy Status:")[1].splitlines()[0], status
        assert ip2 in agent.cli("bpf", "proxy", "list").stdout

        # the access log: a denied request as Cilium prints it
        mon = subprocess.Popen([str(VENV_BIN / "cilium"), "-H", agent.api_socket, "monitor", "--type", "l7"],
                               stdout=subprocess.PIPE, text=True)
        try:
            time.sleep(1)
            request(app2, "GET", ip1, "/private")
            deadline, lines = time.time() + 10, []
            while time.time() < deadline:
                line = mon.stdout.readline()
                lines.append(line)
                if "/private" in line and "Denied" in line:
                    break
            else:
                raise AssertionError("".join(lines))
        finally:
            mon.kill()
            mon.wait()

        # The proxy lives in the agent: while the agent is down a redirected
        # connection has no socket to go to and BPF drops it (fail closed),
        # the L3/L4 verdicts go on; the restarted agent serves L7 again.
        agent.kill9()
        assert "error" in request(app2, "GET", ip1, "/public")
        assert "error" in request(app3, "GET", ip1, "/public")
        agent.start()
        wait_until(lambda: allowed(request(app2, "GET", ip1, "/public")), timeout=30, what="L7 after restart")
        assert denied_by_proxy(request(app2, "GET", ip1, "/private"))

        # Replacing the L7 policy by an L4-only one takes the proxy out of the path.
        agent.cli("policy", "delete", "name=l7-rule")
        import_policy(agent, L3_RULE)
        res = request(app2, "GET", ip1, "/private")
        assert allowed(res) and res["body"].rstrip().endswith(ip2), res
        assert "error" in request(app3, "GET", ip1, "/public")
        assert proxy_port_of(agent, ep1["id"]) == "NONE"
        agent.cli("policy", "delete", "--all")


def test_cilium_http_example_as_written(agent, names):
    """``l7/http/http.json``: app=myService on 80 allows GET /path1 and PUT
    /path2 with ``X-My-Header: true``, from any peer, the host included."""
    srv, cli, ip, ip6 = server_and_client(agent, names, "app=myService", None)
    with echo_server(srv), echo_server(srv, 8080):
        import_policy(agent, HTTP_EXAMPLE)
        assert allowed(request(cli, "GET", ip, "/path1"))
        assert allowed(request(cli, "GET", ip6, "/path1"))
        assert denied_by_proxy(request(cli, "GET", ip, "/path1/more"))
        assert denied_by_proxy(request(cli, "POST", ip, "/path1"))
        assert allowed(request(cli, "PUT", ip, "/path2", headers={"X-My-Header": "true"}, body="v"))
        assert denied_by_proxy(request(cli, "PUT", ip, "/path2", body="v"))
        assert denied_by_proxy(request(cli, "PUT", ip, "/path2", headers={"X-My-Header": "false"}))
        assert denied_by_proxy(request(cli, "GET", ip, "/path2"))
        # from the host: the same rules (the to-container side steers it)
        assert allowed(request(None, "GET", ip, "/path1"))
        assert denied_by_proxy(request(None, "GET", ip, "/path2"))
        # other ports stay closed at L4
        assert "error" in request(cli, "GET", ip, "/path1", port=8080)
    agent.cli("policy", "delete", "--all")


EGRESS_L7 = [{
    "labels": [{"key": "name", "value": "egress-l7"}],
    "endpointSelector": {"matchLabels": {"env": "prod"}},
    "egress": [{"toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}],
                             "rules": {"http": [{"method": "GET", "path": "/public.*"}]}}]}],
}]


def test_egress_l7_rule(agent, names, tmp_path):
    srv, cli, ip, ip6 = server_and_client(agent, names, None, "env=prod")
    policy = tmp_path / "egress-l7.json"
    policy.write_text(json.dumps(EGRESS_L7))
    with echo_server(srv), echo_server(srv, 8080):
        import_policy(agent, policy)
        assert allowed(request(cli, "GET", ip, "/public/index.html"))
        assert allowed(request(cli, "GET", ip6, "/public"))
        assert denied_by_proxy(request(cli, "GET", ip, "/private"))
        assert denied_by_proxy(request(cli, "DELETE", ip, "/public"))
        assert "error" in request(cli, "GET", ip, "/public", port=8080)
    agent.cli("policy", "delete", "--all")


def test_egress_and_ingress_l7_in_a_chain(agent, names, tmp_path):
    """The client's egress rules and the server's ingress rules both apply:
    the egress proxy's upstream connection is handed to the ingress proxy,
    which judges it by the client's identity, not the host's."""
    srv, cli, ip, _ = server_and_client(agent, names, "app=service", "env=prod")
    ingress = [{"labels": [{"key": "name", "value": "ingress-l7"}],
                "endpointSelector": {"matchLabels": {"app": "service"}},
                "ingress": [{"fromEndpoints": [{"matchLabels": {"env": "prod"}}],
                             "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}],
                                          "rules": {"http": [{"method": "GET", "path": "/public"}]}}]}]}]
    policy = tmp_path / "chain.json"
    policy.write_text(json.dumps(EGRESS_L7 + ingress))
    with echo_server(srv):
        import_policy(agent, policy)
        assert allowed(request(cli, "GET", ip, "/public"))
        assert denied_by_proxy(request(cli, "GET", ip, "/public/more"))   # the server's rules
        assert denied_by_proxy(request(cli, "GET", ip, "/private"))       # the client's rules
    agent.cli("policy", "delete", "--all")


def test_cilium_l7_multi_and_simple_examples_as_written(agent, names):
    """``l7/http/l7_multi.json``: app=service takes only GET /public from
    env=prod, and env=prod may only POST to host external-service.org on 80,
    so nothing from env=prod gets through to app=service, each request
    refused by the rule it breaks; another server takes env=prod's POSTs.
    ``l7/http/simple/l7.json``: env=prod may reach app=service on anything
    (an L3 rule, which the union keeps out of the proxy); every other peer
    only GET /public on 80."""
    net = names("cilium-net")
    create_network(net, "--ipv6", "--subnet", "::1/112", "--driver", "cilium", "--ipam-driver", "cilium")
    svc = run_container(names("svc"), net, "-l", "app=service")
    other = run_container(names("other"), net)
    prod = run_container(names("prod"), net, "-l", "env=prod")
    dev = run_container(names("dev"), net)
    labelled(agent, names("svc"), "container:app=service")
    labelled(agent, names("prod"), "container:env=prod")
    ip_svc, ip_other = net_settings(svc, net)["IPAddress"], net_settings(other, net)["IPAddress"]
    ext = {"Host": "external-service.org"}
    with echo_server(svc), echo_server(other):
        import_policy(agent, POLICIES / "l7" / "http" / "l7_multi.json")
        assert denied_by_proxy(request(prod, "GET", ip_svc, "/public"))              # egress: not a POST
        assert denied_by_proxy(request(prod, "POST", ip_svc, "/public", headers=ext))  # ingress: not a GET
        assert allowed(request(prod, "POST", ip_other, "/x", headers=ext))
        assert denied_by_proxy(request(prod, "POST", ip_other, "/x"))                # Host is the IP
        assert "error" in request(dev, "GET", ip_svc, "/public")                     # not env=prod: L3
        agent.cli("policy", "delete", "--all")

        import_policy(agent, POLICIES / "l7" / "http" / "simple" / "l7.json")
        res = request(prod, "GET", ip_svc, "/private")
        assert allowed(res) and res["body"].rstrip().endswith(net_settings(prod, net)["IPAddress"]), res
        assert allowed(request(dev, "GET", ip_svc, "/public"))
        assert denied_by_proxy(request(dev, "GET", ip_svc, "/private"))
    agent.cli("policy", "delete", "--all")
