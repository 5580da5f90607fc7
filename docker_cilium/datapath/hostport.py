"""Published ports in the kernel: DNAT in ``CILIUM_PRE_nat`` / ``CILIUM_OUTPUT_nat``.

What Docker's bridge does without its userland proxy, in chains of our own:
packets to a local address (``-m addrtype --dst-type LOCAL``) and a published
host port are DNATed to the container, from outside (PREROUTING) and from host
processes (OUTPUT). The client's source address is kept, so the container's
ingress policy sees ``world`` for an outside client and ``host`` for a host
process: a published port stays under policy. Three cases need a source NAT:

* a host process on ``127.0.0.1``: a loopback source may not leave by the
  ``lxc`` device (``route_localnet`` on that device lets it, and the reply's
  loopback destination back in), then is masqueraded to a host address;
  ``CILIUM_INPUT`` drops new connections from ``lxc+`` to ``127.0.0.0/8``,
  which ``route_localnet`` would otherwise let a container open to the host;
* a container client (hairpin to itself, or another endpoint through the
  host's address): its reply would go straight to the client's veth
  (``bpf_redirect_peer``), past the conntrack that undoes the DNAT; packets
  coming in by ``lxc+`` are marked in ``CILIUM_PRE_nat`` and masqueraded
  (client = ``host``) when they leave by ``lxc+`` again.

Outside packets to ``127.0.0.0/8`` never reach ``CILIUM_PRE_nat`` (its jump
excludes them), so a port published on 127.0.0.1 is not reachable from the
network (the hole Docker had). Each change is one ``iptables-restore
--noflush`` batch per family: atomic, one fork.
"""

from __future__ import annotations

import asyncio
import shlex
import structlog

from docker_cilium.datapath.iptables import (
    HOSTPORT_MARK,
    INPUT_CHAIN,
    NAT_CHAIN,
    OUTPUT_NAT_CHAIN,
    PRE_NAT_CHAIN,
    Iptables,
    IptablesError,
    hostport_jumps,
)
from docker_cilium.portmap.binding import Mapping

log = structlog.get_logger(__name__)

COMMENT = "cilium: published port"
MARK = f"{HOSTPORT_MARK:#x}/{HOSTPORT_MARK:#x}"


def _dest(m: Mapping) -> str:
    return f"[{m.container_ip}]:{m.container_port}" if m.family == 6 else f"{m.container_ip}:{m.container_port}"


def dnat_rules(m: Mapping) -> list[tuple[str, str]]:
    """(chain, rule) of one mapping; a loopback host address only from host processes."""
    match = ["-p", m.proto] + ([] if m.wildcard else ["-d", m.host_ip]) + ["--dport", str(m.host_port)]
    rule = " ".join(match + ["-m", "comment", "--comment", f'"{COMMENT}"', "-j", "DNAT",
                             "--to-destination", _dest(m)])
    chains = [OUTPUT_NAT_CHAIN] if m.loopback else [PRE_NAT_CHAIN, OUTPUT_NAT_CHAIN]
    return [(c, rule) for c in chains]


def static_rules(family: int) -> list[str]:
    """The per-agent lines of the restore batch that (re)builds our chains."""
    lines = ["*nat", f":{PRE_NAT_CHAIN} - [0:0]", f":{OUTPUT_NAT_CHAIN} - [0:0]",
             f'-A {PRE_NAT_CHAIN} -i lxc+ -m comment --comment "cilium: container client of a published port"'
             f" -j MARK --or-mark {HOSTPORT_MARK:#x}",
             f'-I {NAT_CHAIN} 1 -o lxc+ -m mark --mark {MARK} -m comment --comment '
             f'"cilium: container client of a published port" -j MASQUERADE']
    if family == 4:
        lines.append(f'-I {NAT_CHAIN} 1 -s 127.0.0.0/8 -o lxc+ -m comment --comment '
                     f'"cilium: loopback client of a published port" -j MASQUERADE')
    lines.append("COMMIT")
    if family == 4:
        lines += ["*filter", f":{INPUT_CHAIN} - [0:0]",
                  f"-A {INPUT_CHAIN} -i lxc+ -d 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED "
                  '-m comment --comment "cilium: containers do not reach host loopback" -j DROP', "COMMIT"]
    return lines


def route_localnet_path(ifname: str) -> str:
    return f"/proc/sys/net/ipv4/conf/{ifname}/route_localnet"


class HostPortRules:
    """The published ports' iptables rules; one instance per agent (its ``Iptables``' families)."""

    def __init__(self, iptables: Iptables) -> None:
        self.iptables = iptables
        self._lock = asyncio.Lock()

    def _families(self) -> list[tuple[int, str]]:
        return [(4, "iptables")] + ([(6, "ip6tables")] if self.iptables.ipv6 else [])

    @staticmethod
    async def _restore(binary: str, lines: list[str]) -> None:
        proc = await asyncio.create_subprocess_exec(
            f"{binary}-restore", "-w", "5", "--noflush", stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        _, err = await proc.communicate(("\n".join(lines) + "\n").encode())
        if proc.returncode != 0:
            raise IptablesError(f"{binary}-restore: {err.decode().strip()}")

    async def ensure(self, published: dict[str, list[Mapping]]) -> None:
        """(Re)build the chains with the mappings of ``published`` (endpoint
        device -> its mappings) in them. At agent start, after ``Iptables.ensure``
        has rebuilt ``CILIUM_POST_nat``."""
        todo = [m for ms in published.values() for m in ms]
        async with self._lock:
            for ifname, ms in published.items():
                if any(m.family == 4 for m in ms):
                    try:
                        await asyncio.to_thread(self._set_route_localnet, ifname, True)
                    except FileNotFoundError:
                        # Its link is gone (a reboot, a deleted veth): the endpoint waits
                        # for Docker's delete; the rules lead nowhere meanwhile.
                        log.warning("hostport.link_gone", ifname=ifname)
            for family, binary in self._families():
                lines = static_rules(family)
                nat_end = lines.index("COMMIT")  # mapping rules go in the nat section
                lines[nat_end:nat_end] = [f"-A {c} {r}" for m in todo if m.family == family
                                          for c, r in dnat_rules(m)]
                await self._restore(binary, lines)
                for table, chain, parent, match in hostport_jumps(family):
                    if await self.iptables._run(binary, "-t", table, "-C", parent, *match, "-j", chain,
                                                check=False) != 0:
                        await self.iptables._run(binary, "-t", table, "-I", parent, "1", *match, "-j", chain)

    async def add(self, mappings: list[Mapping], ifname: str) -> None:
        """Install ``mappings`` (all or none per family) for the endpoint behind ``ifname``."""
        async with self._lock:
            if any(m.family == 4 for m in mappings):
                await asyncio.to_thread(self._set_route_localnet, ifname, True)
            done: list[int] = []
            try:
                for family, binary in self._families():
                    rules = [f"-A {c} {r}" for m in mappings if m.family == family for c, r in dnat_rules(m)]
                    if rules:
                        await self._restore(binary, ["*nat", *rules, "COMMIT"])
                        done.append(family)
            except BaseException:
                await self._delete_locked([m for m in mappings if m.family in done])
                raise

    async def delete(self, mappings: list[Mapping], ifname: str | None = None) -> None:
        """Remove ``mappings``' rules (those already gone are fine)."""
        async with self._lock:
            await self._delete_locked(mappings)
            if ifname:
                await asyncio.to_thread(self._set_route_localnet, ifname, False)

    async def _delete_locked(self, mappings: list[Mapping]) -> None:
        for family, binary in self._families():
            rules = [(c, r) for m in mappings if m.family == family for c, r in dnat_rules(m)]
            if not rules:
                continue
            try:
                await self._restore(binary, ["*nat", *[f"-D {c} {r}" for c, r in rules], "COMMIT"])
            except IptablesError:
                # One was gone already (the batch is all or nothing): one by one.
                for chain, rule in rules:
                    await self.iptables._run(binary, "-t", "nat", "-D", chain,
                                             *shlex.split(rule), check=False)

    @staticmethod
    def _set_route_localnet(ifname: str, on: bool) -> None:
        try:
            with open(route_localnet_path(ifname), "w") as f:
                f.write("1" if on else "0")
        except FileNotFoundError:
            if on:
                raise
        log.debug("hostport.route_localnet", ifname=ifname, on=on)
