"""iptables chains of our own, installed once at agent start (never per endpoint).

Docker sets the FORWARD policy to DROP, so routed container traffic needs an
explicit accept; masquerading lets containers reach beyond the node. Rules
live in ``CILIUM_*`` chains with one jump each from the built-in chains, so
they can be inspected and removed as a unit, and re-running ``ensure`` after a
restart is idempotent. The rules stay when the agent stops: containers keep
their connectivity while the agent is down.
"""

from __future__ import annotations

import asyncio
import shutil

import structlog

log = structlog.get_logger(__name__)

FORWARD_CHAIN = "CILIUM_FORWARD"
NAT_CHAIN = "CILIUM_POST_nat"


class IptablesError(RuntimeError):
    pass


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
                self._masq_sources[family] = set()
                if self.masquerade:
                    for src in masq_sources.get(family, []):
                        await self._add_masq(family, binary, src)

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
            for table, chain, parent in (("filter", FORWARD_CHAIN, "FORWARD"), ("nat", NAT_CHAIN, "POSTROUTING")):
                while await self._run(binary, "-t", table, "-D", parent, "-j", chain, check=False) == 0:
                    pass
                await self._run(binary, "-t", table, "-F", chain, check=False)
                await self._run(binary, "-t", table, "-X", chain, check=False)
