"""iptables chains of our own, installed once at agent start (never per endpoint).

Docker sets the FORWARD policy to DROP, so routed container traffic needs an
explicit accept; masquerading lets containers reach beyond the node. Rules
live in ``CILIUM_*`` chains with one jump each from the built-in chains, so
they can be inspected and removed as a unit, and re-running ``ensure`` after a
restart is idempotent. The rules stay when the agent stops: containers keep
their connectivity while the agent is down.

Traffic routed into an endpoint from elsewhere (a container on Docker's
``bridge`` or any other bridge network) keeps its own source address: Docker
masquerades its bridges' traffic to a host address, which the ipcache maps to
identity ``host``, so every non-cilium container would pass ``fromEntities:
host``. Cilium's rule is that only the host's own addresses are ``host``; the
first rule of ``CILIUM_POST_nat`` therefore ACCEPTs (ends NAT for) traffic
leaving by ``lxc+`` whose source is not a local address, before Docker's
MASQUERADE can see it. Replies need no NAT: the endpoint answers the bridge
address, which the host routes back. Host processes keep their local source
and the ``host`` identity. Docker inserts its MASQUERADE rules at the top of
POSTROUTING whenever it creates a bridge network (also on every dockerd
start), so ``ensure_nat_first`` puts our jump back in front; the agent calls
it on those Docker events.
"""

from __future__ import annotations

import asyncio
import shlex
import shutil

import structlog

log = structlog.get_logger(__name__)

FORWARD_CHAIN = "CILIUM_FORWARD"
NAT_CHAIN = "CILIUM_POST_nat"
#: Published ports (``datapath/hostport.py``): DNAT from outside and from host
#: processes, and the drop that keeps containers off the host's loopback.
PRE_NAT_CHAIN = "CILIUM_PRE_nat"
OUTPUT_NAT_CHAIN = "CILIUM_OUTPUT_nat"
INPUT_CHAIN = "CILIUM_INPUT"
#: skb mark of a published-port packet that came in from a container (masqueraded on its way out).
HOSTPORT_MARK = 0x4000
KEEP_SOURCE_RULE = ("-o", "lxc+", "-m", "addrtype", "!", "--src-type", "LOCAL", "-m", "comment",
                    "--comment", "cilium: non-host sources keep their address into endpoints", "-j", "ACCEPT")


class IptablesError(RuntimeError):
    pass


def hostport_jumps(family: int) -> list[tuple[str, str, str, tuple[str, ...]]]:
    """(table, chain, parent, match) of the published ports' jumps. Outside
    packets to loopback are never DNATed (they would be routed to the container)."""
    loopback = "127.0.0.0/8" if family == 4 else "::1/128"
    local = ("-m", "addrtype", "--dst-type", "LOCAL")
    jumps = [("nat", PRE_NAT_CHAIN, "PREROUTING", ("!", "-d", loopback, *local)),
             ("nat", OUTPUT_NAT_CHAIN, "OUTPUT", local)]
    if family == 4:
        jumps.append(("filter", INPUT_CHAIN, "INPUT", ()))
    return jumps


#: (table, chain, parent) of every chain of ours.
CHAINS = (("filter", FORWARD_CHAIN, "FORWARD"), ("nat", NAT_CHAIN, "POSTROUTING"),
          ("nat", PRE_NAT_CHAIN, "PREROUTING"), ("nat", OUTPUT_NAT_CHAIN, "OUTPUT"),
          ("filter", INPUT_CHAIN, "INPUT"))


class Iptables:
    """Thin async wrapper; one instance per agent."""

    def __init__(self, ipv6: bool = True, masquerade: bool = True) -> None:
        self.ipv6 = ipv6 and shutil.which("ip6tables") is not None
        self.masquerade = masquerade
        self._masq_sources: dict[int, set[str]] = {4: set(), 6: set()}
        self._lock = asyncio.Lock()

    @staticmethod
    async def _run(binary: str, *args: str, check: bool = True) -> int:
        proc = await asyncio.create_subprocess_exec(
            binary, "-w", "5", *args, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
        )
        _, err = await proc.communicate()
        if check and proc.returncode != 0:
            raise IptablesError(f"{binary} {' '.join(args)}: {err.decode().strip()}")
        return proc.returncode or 0

    def _binaries(self) -> list[tuple[int, str]]:
        out = [(4, "iptables")]
        if self.ipv6:
            out.append((6, "ip6tables"))
        return out

    async def _ensure_chain(self, binary: str, table: str, chain: str, parent: str) -> None:
        if await self._run(binary, "-t", table, "-n", "-L", chain, check=False) != 0:
            await self._run(binary, "-t", table, "-N", chain)
        else:
            await self._run(binary, "-t", table, "-F", chain)
        if await self._run(binary, "-t", table, "-C", parent, "-j", chain, check=False) != 0:
            await self._run(binary, "-t", table, "-I", parent, "1", "-j", chain)

    async def ensure(self, masq_sources: dict[int, list[str]]) -> None:
        """(Re)build our chains; ``masq_sources`` per family are the pools to NAT."""
        async with self._lock:
            for family, binary in self._binaries():
                await self._ensure_chain(binary, "filter", FORWARD_CHAIN, "FORWARD")
                for args in (("-i", "lxc+"), ("-o", "lxc+"), ("-i", "cilium_host"), ("-o", "cilium_host")):
                    await self._run(binary, "-A", FORWARD_CHAIN, *args, "-m", "comment",
                                    "--comment", "cilium: container traffic", "-j", "ACCEPT")
                await self._ensure_chain(binary, "nat", NAT_CHAIN, "POSTROUTING")
                await self._jump_first(binary, "nat", NAT_CHAIN, "POSTROUTING")
                await self._run(binary, "-t", "nat", "-A", NAT_CHAIN, *KEEP_SOURCE_RULE)
                self._masq_sources[family] = set()
                if self.masquerade:
                    for src in masq_sources.get(family, []):
                        await self._add_masq(family, binary, src)

    @staticmethod
    async def _rules(binary: str, table: str, parent: str, check: bool = True) -> list[str]:
        """The ``-A`` lines of ``iptables -S parent``, in order."""
        proc = await asyncio.create_subprocess_exec(binary, "-w", "5", "-t", table, "-S", parent,
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await proc.communicate()
        if check and proc.returncode != 0:
            raise IptablesError(f"{binary} -t {table} -S {parent}: {err.decode().strip()}")
        return [line.strip() for line in out.decode().splitlines() if line.startswith(f"-A {parent} ")]

    async def _jump_positions(self, binary: str, table: str, chain: str, parent: str) -> list[int]:
        rules = await self._rules(binary, table, parent)
        return [i + 1 for i, rule in enumerate(rules) if rule == f"-A {parent} -j {chain}"]

    async def _jump_first(self, binary: str, table: str, chain: str, parent: str) -> bool:
        """Make ``-j chain`` the first rule of ``parent``; True if it had to move.

        The new jump goes in before the old one is deleted, so no packet
        passes while neither is there; each deletion is by a position read
        just before it, as the rule spec would match the new jump first.
        """
        positions = await self._jump_positions(binary, table, chain, parent)
        if positions == [1]:
            return False
        if positions[:1] != [1]:
            await self._run(binary, "-t", table, "-I", parent, "1", "-j", chain)
        while len(positions := await self._jump_positions(binary, table, chain, parent)) > 1:
            await self._run(binary, "-t", table, "-D", parent, str(positions[-1]))
        return True

    async def ensure_nat_first(self) -> None:
        """Put our nat jump back in front of rules Docker inserted since (see module doc)."""
        async with self._lock:
            for _, binary in self._binaries():
                if await self._jump_first(binary, "nat", NAT_CHAIN, "POSTROUTING"):
                    log.info("iptables.nat_jump_restored", binary=binary)

    async def _add_masq(self, family: int, binary: str, source: str) -> None:
        if source in self._masq_sources[family]:
            return
        await self._run(binary, "-t", "nat", "-A", NAT_CHAIN, "-s", source, "!", "-d", source,
                        "!", "-o", "lxc+", "-m", "comment", "--comment", "cilium masquerade",
                        "-j", "MASQUERADE")
        self._masq_sources[family].add(source)

    async def add_masquerade(self, family: int, source: str) -> None:
        """NAT a (Docker-IPAM) pool leaving the node; no-op when masquerading is off."""
        if not self.masquerade or (family == 6 and not self.ipv6):
            return
        async with self._lock:
            await self._add_masq(family, "iptables" if family == 4 else "ip6tables", source)

    async def remove_masquerade(self, family: int, source: str) -> None:
        if source not in self._masq_sources.get(family, set()):
            return
        binary = "iptables" if family == 4 else "ip6tables"
        async with self._lock:
            await self._run(binary, "-t", "nat", "-D", NAT_CHAIN, "-s", source, "!", "-d", source,
                            "!", "-o", "lxc+", "-m", "comment", "--comment", "cilium masquerade",
                            "-j", "MASQUERADE", check=False)
            self._masq_sources[family].discard(source)

    async def remove_all(self) -> None:
        """Remove every rule and chain we installed (the end-to-end tests' cleanup)."""
        for _, binary in (self._binaries() if self.ipv6 else [(4, "iptables"), (6, "ip6tables")]):
            if shutil.which(binary) is None:
                continue
            for table, chain, parent in CHAINS:
                # Every jump to the chain, whatever it matches: listed, then deleted by its spec.
                for spec in await self._jumps(binary, table, chain, parent):
                    await self._run(binary, "-t", table, "-D", parent, *spec, check=False)
                await self._run(binary, "-t", table, "-F", chain, check=False)
                await self._run(binary, "-t", table, "-X", chain, check=False)

    async def _jumps(self, binary: str, table: str, chain: str, parent: str) -> list[list[str]]:
        specs = [shlex.split(line)[2:] for line in await self._rules(binary, table, parent, check=False)]
        return [spec for spec in specs if spec[-2:] == ["-j", chain]]
