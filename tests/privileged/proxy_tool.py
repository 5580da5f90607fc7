"""Runs the agent's ProxyManager inside a namespace for the privileged proxy
test: one ingress redirect on a fixed port with transparent listeners;
prints ``READY <port>`` and then each access-log record as a JSON line;
serves until stdin closes."""
import asyncio
import json
import sys

from docker_cilium.policy.api.l7 import PortRuleHTTP
from docker_cilium.proxy.accesslog import AccessLog
from docker_cilium.proxy.manager import ProxyManager
from docker_cilium.proxy.peers import Peer
from docker_cilium.proxy.redirect import EndpointAddr, RedirectKey


class Peers:
    def peer(self, ip: str) -> Peer:
        return Peer(1001, 0, (f"ip={ip}",))


class Print:
    def publish(self, event: dict) -> None:
        print(json.dumps(event), flush=True)


async def main(port: int) -> None:
    mgr = ProxyManager(Peers(), AccessLog(Print()), port_min=port, port_max=port)
    key = RedirectKey(1, "ingress", 80, 6)
    got = await mgr.update_endpoint(EndpointAddr(1, 1002, None, None),
                                    {key: {1001: (PortRuleHTTP(method="GET", path="/public"),)}})
    print("READY", got[key], flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await mgr.close()


asyncio.run(main(int(sys.argv[1])))
