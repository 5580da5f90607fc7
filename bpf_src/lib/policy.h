/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Policy map lookup: (endpoint, direction, peer identity, dport, proto).
 *
 * Order: exact (identity, dport, proto) -> (identity, 0, 0) [L3-only: all
 * ports and ICMP] -> (0, dport, proto) [any peer, that port] -> (0, 0, 0)
 * [allow all]. ICMP (and other portless protocols) only match the
 * identity-wide (identity, 0, 0) and (0, 0, 0) entries.
 * The deciding entry's kind is reported as a POLICY_MATCH_* in that order
 * (L3_L4, L3_ONLY, L4_ONLY, ALL; NONE on a miss) for policy verdicts.
 * Misses: DROP_POLICY_L4 (159) if a POLICY_PROTO_L4_MARKER entry exists for
 * the identity (or for identity 0), i.e. the identity has port rules but not
 * this one; DROP_POLICY_CIDR (162) for CIDR identities; else DROP_POLICY (133).
 * The matching entry's packets/bytes counters are bumped atomically: on the
 * packet that opens a flow (the verdict) and, for accounting only, on every
 * later forward packet of the flow (replies are not counted).
 */
#ifndef __LIB_POLICY_H_
#define __LIB_POLICY_H_

#include "common.h"
#include "maps.h"
#include "l4.h"

#define IDENTITY_LOCAL_SCOPE_FLAG (1 << 24)	/* CIDR identities */

static __always_inline struct policy_entry *policy_get(__u16 lxc_id, __u8 direction,
						       __u32 identity, __u16 dport,
						       __u8 proto)
{
	struct policy_key key = {};

	key.sec_identity = identity;
	key.lxc_id = lxc_id;
	key.dport = dport;
	key.proto = proto;
	key.direction = direction;
	return bpf_map_lookup_elem(&cilium_policy, &key);
}

/* Returns 0 if allowed, else the (positive) drop reason; *match (if not
 * NULL) gets the POLICY_MATCH_* of the deciding entry, *proxy_port (if not
 * NULL) its L7 proxy port (network order, 0 = none). */
static __always_inline int policy_can_access_proxy(__u16 lxc_id, __u8 direction,
						   __u32 identity, const struct flow *f,
						   __u32 len, __u8 *match, __u16 *proxy_port)
{
	struct policy_entry *e;
	int l4 = flow_is_l4_ports(f);
	__u8 m = POLICY_MATCH_L3_L4;

	e = l4 ? policy_get(lxc_id, direction, identity, f->dport, f->nexthdr) : NULL;
	if (!e) {
		m = POLICY_MATCH_L3_ONLY;
		e = policy_get(lxc_id, direction, identity, 0, 0);
	}
	if (!e && l4) {
		m = POLICY_MATCH_L4_ONLY;
		e = policy_get(lxc_id, direction, 0, f->dport, f->nexthdr);
	}
	if (!e) {
		m = POLICY_MATCH_ALL;
		e = policy_get(lxc_id, direction, 0, 0, 0);
	}
	if (match)
		*match = e ? m : POLICY_MATCH_NONE;
	if (e) {
		if (e->deny)
			return DROP_POLICY_DENY;
		__sync_fetch_and_add(&e->packets, 1);
		__sync_fetch_and_add(&e->bytes, len);
		if (proxy_port)
			*proxy_port = e->proxy_port;
		return 0;
	}
	if (policy_get(lxc_id, direction, identity, 0, POLICY_PROTO_L4_MARKER) ||
	    policy_get(lxc_id, direction, 0, 0, POLICY_PROTO_L4_MARKER))
		return DROP_POLICY_L4;
	if (identity & IDENTITY_LOCAL_SCOPE_FLAG)
		return DROP_POLICY_CIDR;
	return DROP_POLICY;
}

static __always_inline int policy_can_access(__u16 lxc_id, __u8 direction,
					     __u32 identity, const struct flow *f,
					     __u32 len, __u8 *match)
{
	return policy_can_access_proxy(lxc_id, direction, identity, f, len, match, NULL);
}

#endif /* __LIB_POLICY_H_ */
