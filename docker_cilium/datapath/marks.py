"""skb->mark values shared with the C datapath (Cilium's ``MARK_MAGIC_*``),
mirrored from ``bpf_src/lib/common.h`` (tests/unit/test_c_constants.py).

Bits 8-11 are the magic; the rest depends on it:
- ``MARK_MAGIC_TO_PROXY | proxy_port << 16``: set by BPF on a packet it hands
  to the proxy's socket; policy routing (table ``PROXY_ROUTE_TABLE``) delivers
  it locally.
- ``MARK_MAGIC_PROXY_INGRESS`` / ``_EGRESS`` with the source identity: set by
  the proxy (SO_MARK) on its upstream connections, so that the destination's
  to-container program takes the identity from the mark and does not send the
  connection to the proxy again (ingress) or knows it went through the
  source's egress proxy (egress).
- ``MARK_MAGIC_IDENTITY`` with the source identity: set by ``from-overlay``
  on a packet that came through the tunnel, from the tunnel key's identity,
  so ``to-container`` judges it without an ipcache lookup (Cilium's).

Identity layout: bits 16-31 hold identity bits 0-15, bits 0-7 identity bits
24-31 (the local-scope flag, 1 << 24, of CIDR identities); identity bits
16-23 are never used by our allocators.
"""

from __future__ import annotations

MARK_MAGIC_HOST_MASK = 0x0F00
MARK_MAGIC_TO_PROXY = 0x0200
MARK_MAGIC_PROXY_INGRESS = 0x0A00
MARK_MAGIC_PROXY_EGRESS = 0x0B00
MARK_MAGIC_IDENTITY = 0x0F00

#: policy routing for MARK_MAGIC_TO_PROXY (Cilium's numbers)
PROXY_ROUTE_TABLE = 2004
PROXY_RULE_PRIORITY = 9


def identity_mark(magic: int, identity: int) -> int:
    """The SO_MARK the proxy sets on an upstream socket for ``identity``."""
    if identity & 0x00FF0000:
        raise ValueError(f"identity {identity:#x} uses bits 16-23, which the mark cannot carry")
    return ((identity & 0xFFFF) << 16) | magic | ((identity >> 24) & 0xFF)


def mark_identity(mark: int) -> int:
    return ((mark >> 16) & 0xFFFF) | ((mark & 0xFF) << 24)


def to_proxy_mark(proxy_port: int) -> int:
    return MARK_MAGIC_TO_PROXY | (proxy_port << 16)
