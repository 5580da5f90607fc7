"""The ipcache: address prefix -> security identity, and the CIDR identities."""

from .ipcache import LOCAL_IDENTITY_BASE, WORLD_PREFIXES, CIDRPlan, IPCache, IPCacheMap, host_prefix

__all__ = ["CIDRPlan", "LOCAL_IDENTITY_BASE", "WORLD_PREFIXES", "IPCache", "IPCacheMap", "host_prefix"]
