"""libnetwork IpamDriver calls -> IPAM operations (addresses are ours to choose)."""

from __future__ import annotations

from typing import Any

from docker_cilium.ipam.allocator import (
    ADDRESS_SPACE_GLOBAL,
    ADDRESS_SPACE_LOCAL,
    CILIUM_ADDRESS_SPACES,
    IPAM,
    IPAMError,
    OWNER_DOCKER,
)
from docker_cilium.plugin.schemas import (
    Empty,
    ReleaseAddressRequest,
    ReleasePoolRequest,
    RequestAddressRequest,
    RequestPoolRequest,
)

Reply = dict[str, Any]

GATEWAY_OPTION = "com.docker.network.gateway"
REQUEST_TYPE = "RequestAddressType"


class IpamDriver:
    def __init__(self, ipam: IPAM) -> None:
        self.ipam = ipam

    async def get_capabilities(self, _: Empty) -> Reply:
        return {"RequiresMACAddress": False, "RequiresRequestReplay": False}

    async def get_default_address_spaces(self, _: Empty) -> Reply:
        return {"LocalDefaultAddressSpace": ADDRESS_SPACE_LOCAL, "GlobalDefaultAddressSpace": ADDRESS_SPACE_GLOBAL}

    async def request_pool(self, req: RequestPoolRequest) -> Reply:
        space = req["AddressSpace"]
        if space and space not in CILIUM_ADDRESS_SPACES:
            raise IPAMError(f"unknown address space {space!r}: "
                            f"expected {ADDRESS_SPACE_LOCAL} or {ADDRESS_SPACE_GLOBAL}")
        pool = self.ipam.request_pool(req["V6"], req["Pool"], req["SubPool"])
        # Whole-range IPv4 pools are announced as 0.0.0.0/0, as Cilium did: it
        # skips dockerd's overlap check against host routes, and containers get
        # /32 addresses anyway.
        announced = "0.0.0.0/0" if pool.family == 4 and pool.whole_range else str(pool.network)
        return {"PoolID": pool.id, "Pool": announced, "Data": {GATEWAY_OPTION: self.ipam.gateway(pool)}}

    async def release_pool(self, req: ReleasePoolRequest) -> Reply:
        self.ipam.decode_pool_id(req["PoolID"])  # validates it; pools hold no state to free
        return {}

    async def request_address(self, req: RequestAddressRequest) -> Reply:
        pool = self.ipam.decode_pool_id(req["PoolID"])
        owner = "gateway" if req["Options"].get(REQUEST_TYPE) == GATEWAY_OPTION else OWNER_DOCKER
        ip = await self.ipam.allocate(pool, owner, req["Address"])
        return {"Address": f"{ip}/{pool.host_prefixlen}", "Data": {}}

    async def release_address(self, req: ReleaseAddressRequest) -> Reply:
        await self.ipam.release(req["Address"], self.ipam.decode_pool_id(req["PoolID"]))
        return {}

    def routes(self) -> dict[str, Any]:
        p = "IpamDriver."
        return {
            p + "GetCapabilities": self.get_capabilities,
            p + "GetDefaultAddressSpaces": self.get_default_address_spaces,
            p + "RequestPool": self.request_pool,
            p + "ReleasePool": self.release_pool,
            p + "RequestAddress": self.request_address,
            p + "ReleaseAddress": self.release_address,
        }
