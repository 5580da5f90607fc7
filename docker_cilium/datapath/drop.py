"""Drop reasons the datapath reports: the ``reason`` of a cilium_metrics key
and the ``subtype`` of a NOTIFY_DROP event. Numbers and texts are Cilium's
(``pkg/monitor/api`` ``errors``); the numbers mirror the ``DROP_*`` defines
in bpf_src/lib/common.h (tests/unit/test_c_constants.py holds them to it)."""

from __future__ import annotations

REASON_FORWARDED = 0
DROP_INVALID_SMAC = 130
DROP_INVALID_DMAC = 131
DROP_INVALID_SIP = 132
DROP_POLICY = 133
DROP_INVALID = 134
DROP_CT_INVALID_HDR = 135
DROP_UNKNOWN_L3 = 139
DROP_WRITE_ERROR = 141
DROP_NO_TUNNEL_KEY = 147
DROP_NO_LXC = 152
DROP_CT_CREATE_FAILED = 155
DROP_INVALID_EXTHDR = 156
DROP_NO_SERVICE = 158
DROP_POLICY_L4 = 159
DROP_POLICY_CIDR = 162
DROP_ENCAP_PROHIBITED = 170
DROP_UNKNOWN_SENDER = 172
DROP_FRAG_NOT_FOUND = 175
DROP_PROXY_LOOKUP_FAILED = 178
DROP_PROXY_SET_FAILED = 179
DROP_POLICY_DENY = 181
DROP_VLAN_FILTERED = 182

DROP_REASONS = {
    REASON_FORWARDED: "Forwarded",
    DROP_INVALID_SMAC: "Invalid source mac",
    DROP_INVALID_DMAC: "Invalid destination mac",
    DROP_INVALID_SIP: "Invalid source ip",
    DROP_POLICY: "Policy denied (L3)",
    DROP_INVALID: "Invalid packet",
    DROP_CT_INVALID_HDR: "CT: Truncated or invalid header",
    DROP_UNKNOWN_L3: "Unsupported L3 protocol",
    DROP_WRITE_ERROR: "Failed to write or modify packet",
    DROP_NO_TUNNEL_KEY: "No tunnel/encapsulation key (datapath BUG!)",
    DROP_NO_LXC: "No matching local container found",
    DROP_CT_CREATE_FAILED: "CT: Map insertion failed",
    DROP_INVALID_EXTHDR: "Invalid extension header",
    DROP_NO_SERVICE: "Service backend not found",
    DROP_POLICY_L4: "Policy denied (L4)",
    DROP_POLICY_CIDR: "Policy denied (CIDR)",
    DROP_ENCAP_PROHIBITED: "Encapsulation traffic is prohibited",
    DROP_UNKNOWN_SENDER: "Unknown sender",
    DROP_FRAG_NOT_FOUND: "First logical datagram fragment not found",
    DROP_PROXY_LOOKUP_FAILED: "Socket lookup failed",
    DROP_PROXY_SET_FAILED: "Socket assign failed",
    DROP_POLICY_DENY: "Policy denied by denylist",
    DROP_VLAN_FILTERED: "VLAN traffic disallowed by VLAN filter",
}
