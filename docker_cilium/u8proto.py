"""IP protocol numbers, the one table of them (Cilium's ``pkg/u8proto``).

The datapath keys policy entries and conntrack tuples by these numbers; the
policy engine, the map wrappers and the CLI all read them from here.
"""

from __future__ import annotations

ANY = 0  # wildcard in policy-map keys: every protocol
ICMP = 1
TCP = 6
UDP = 17
ICMPV6 = 58
SCTP = 132

#: Lower-case name -> number, as Cilium's ``u8proto.ProtoIDs``.
PROTO_IDS: dict[str, int] = {"any": ANY, "icmp": ICMP, "tcp": TCP, "udp": UDP, "icmpv6": ICMPV6, "sctp": SCTP}
#: Number -> upper-case name, for output (``80/TCP``).
PROTO_NAMES: dict[int, str] = {num: name.upper() for name, num in PROTO_IDS.items()}
