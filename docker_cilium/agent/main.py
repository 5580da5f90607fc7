"""`cilium-agent`: flags in Cilium's style, then run until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import os
import signal

import socket

import click
import structlog

from docker_cilium import defaults
from docker_cilium import logging as dclog
from docker_cilium.agent.config import DaemonConfig
from docker_cilium.agent.daemon import Daemon
from docker_cilium.datapath.maps.configmap import canonical_monitor_aggregation
from docker_cilium.kvstore import parse_options
from docker_cilium.metrics.server import parse_serve_addr
from docker_cilium.policy.resolve import ENFORCEMENT_MODES


def _serve_addr(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if value:
        try:
            parse_serve_addr(value)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None
    return value


def _opts(values: tuple[str, ...]) -> dict[str, str]:
    try:
        return parse_options(values)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--kvstore-opt") from None


def _aggregation_level(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    """Cilium's spellings (names any case, or 0-4) -> the canonical name."""
    try:
        return canonical_monitor_aggregation(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


# Every flag also reads CILIUM_<FLAG> from the environment, as Cilium's agent
# does (CILIUM_KVSTORE=etcd): the managed plugin's `docker plugin set` names.
@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True,
                                 "auto_envvar_prefix": "CILIUM"})
@click.option("--kvstore", type=click.Choice(["local", "etcd"]), default="local",
              help="Key-value store for cluster state (local = embedded, no server)")
@click.option("--kvstore-opt", multiple=True,
              help="Store options: etcd.address=HOST:PORT[,...], etcd.config=PATH (Cilium's etcd YAML: "
                   "endpoints, trusted-ca-file, cert-file, key-file, username, password), lease.ttl=SECONDS")
@click.option("--node-name", default=socket.gethostname, show_default="the host name",
              help="This node's name in the cluster (node registry, range claims); unique per host")
@click.option("--ipv4-range", default=None, help="Node IPv4 range (default 10.X.0.0/16 from the node IP)")
@click.option("--ipv6-range", default=None, help="Node IPv6 range (default f00d::<v4 range>:0:0/96)")
@click.option("--enable-ipv6/--disable-ipv6", default=True, help="IPv6 addressing for endpoints")
@click.option("--lib-dir", default=defaults.LIB_DIR, help="Persistent state (allocations, endpoints)")
@click.option("--state-dir", default=defaults.STATE_DIR, help="Runtime state (compiled datapath)")
@click.option("--socket-path", default=defaults.API_SOCKET, help="Agent API socket")
@click.option("--plugin-socket", default=defaults.PLUGIN_SOCKET, help="Docker plugin socket")
@click.option("--docker-socket", default=defaults.DOCKER_SOCKET, help="Docker API socket (events)")
@click.option("--bpf-root", default=defaults.BPFFS_ROOT, help="bpffs mount point")
@click.option("--masquerade/--no-masquerade", default=True, help="NAT traffic leaving the node range")
@click.option("--mtu", default=0, type=int, help="Endpoint MTU (0 = follow the uplink)")
@click.option("--enable-policy", "policy_enforcement", type=click.Choice(ENFORCEMENT_MODES), default="default",
              help="Policy enforcement mode")
@click.option("--docker-reconcile-grace", type=click.FloatRange(min=0), default=60.0,
              help="Seconds an address or endpoint restored at start must be old before it is released "
                   "when dockerd does not know it")
@click.option("--prometheus-serve-addr", default="", callback=_serve_addr,
              help="Serve Prometheus metrics on HOST:PORT (/metrics; :PORT for every interface); off when empty")
@click.option("--monitor-aggregation", default="medium", callback=_aggregation_level,
              help="Level of monitor aggregation for traces from the datapath: none, lowest, low, "
                   "medium (traces of new connections and state changes only) or maximum")
@click.option("--prefilter-device", default="", metavar="DEV",
              help="Device to attach the XDP prefilter to (drops sources in `cilium prefilter` CIDRs); off when empty")
@click.option("--prefilter-mode", type=click.Choice(["native", "generic"]), default="native",
              help="XDP mode of the prefilter: native (in the driver) or generic (any device, slower)")
@click.option("--bpf-lb-sock", type=click.BOOL, default=True,
              help="Socket-level load balancing: host processes reach service VIPs (cgroup connect/sendmsg/"
                   "recvmsg/getpeername hooks, host netns only); false detaches them")
@click.option("--cgroup-root", default=defaults.CGROUP_ROOT,
              help="Where cgroup v2 is (mounted there if it is not) for the socket LB's hooks")
@click.option("--enable-l7-proxy", type=click.BOOL, default=True,
              help="Enable the L7 (HTTP) proxy: transparent listeners for policies with toPorts rules.http; "
                   "false: endpoints whose policy has L7 rules fail their regeneration")
@click.option("--tunnel", type=click.Choice(list(defaults.TUNNEL_MODES)), default=None,
              help="Encapsulation between nodes: vxlan (cilium_vxlan, UDP 8472) or disabled; "
                   "default: vxlan with --kvstore etcd, disabled with the embedded store")
@click.option("--debug", "-D", is_flag=True, help="Debug logging (and datapath debug events)")
@click.option("--log-format", type=click.Choice(["auto", "json", "text"]), default="auto")
def main(kvstore: str, kvstore_opt: tuple[str, ...], **kw: object) -> None:
    """Cilium-style networking and security agent for Docker."""
    config = DaemonConfig(kvstore=kvstore, kvstore_opts=_opts(kvstore_opt), **kw)  # type: ignore[arg-type]
    dclog.setup(config.debug, config.log_format)
    if config.kvstore == "etcd" and not {"etcd.address", "etcd.config"} & set(config.kvstore_opts):
        raise click.UsageError("--kvstore etcd needs --kvstore-opt etcd.address=HOST:PORT or etcd.config=PATH")
    # Everything the agent and its children (clang, bpffs pins) create is
    # root's alone; the API socket's 0660 is set explicitly (servers.py).
    os.umask(0o077)
    asyncio.run(_run(config))


async def _run(config: DaemonConfig) -> None:
    log = structlog.get_logger("agent")
    daemon = Daemon(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await daemon.start()
    except Exception as exc:
        log.error("agent.start_failed", error=str(exc), exc_info=True)
        await daemon.stop()
        raise SystemExit(1) from None
    await stop.wait()
    await daemon.stop()


if __name__ == "__main__":
    main()
