/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Connection tracking (cilium_ct4 / cilium_ct6, LRU hashes).
 *
 * An entry is created only after policy allowed a NEW flow; it is keyed by the
 * tuple as seen from the originator (saddr = originator) and a flags byte
 * telling which program created it (CT_EGRESS: from-container, the local
 * endpoint opened it; CT_INGRESS: to-container, the peer opened it). Packets
 * of the same tuple (established) or of its reverse (replies) pass without a
 * policy lookup. Expired entries are treated as absent; the agent garbage
 * collects them (CTMap.gc).
 *
 * Lifetimes: until a packet went the reply way (CT_F_SEEN_REPLY) an entry
 * lives CT_SYN_TIMEOUT (TCP) / CT_LIFETIME_NONTCP from its creation and the
 * originator's packets do not extend it; replied TCP entries live
 * CT_LIFETIME_TCP (CT_CLOSE_TIMEOUT once closing), other replied entries
 * CT_LIFETIME_NONTCP from their last packet. A TCP packet without SYN still
 * creates an entry when policy allows it (connections survive a CT flush, as
 * in Cilium and nf_conntrack), but only a short one until the peer answers.
 * Unreplied entries are charged to the endpoint they were created for
 * (cilium_ct_budget, CT_EP_BUDGET per CT_BUDGET_WINDOW), so that one
 * endpoint cannot evict everyone's entries from the shared LRU tables. */
#ifndef __LIB_CONNTRACK_H_
#define __LIB_CONNTRACK_H_

#include "common.h"
#include "maps.h"
#include "ipv4.h"
#include "ipv6.h"

enum {
	CT_NEW = 0,
	CT_ESTABLISHED = 1,
	CT_REPLY = 2,
	CT_RELATED = 3,
};

/* ct_lookup's 'monitor' bits: what a packet of a tracked connection has new
 * for the monitor (lib/trace.h aggregates traces with them) */
#define CT_MONITOR_STATE	(1 << 0)	/* the entry's flags changed: first reply, FIN, RST */
#define CT_MONITOR_INTERVAL	(1 << 1)	/* CT_REPORT_INTERVAL passed since the last report */

static __always_inline struct ct_entry *ct_lookup_one(const struct flow *f, int reverse,
						      __u8 flags)
{
	if (f->family == 4) {
		struct ipv4_ct_tuple k = {};

		if (reverse) {
			k.saddr = f->daddr.p32[0];
			k.daddr = f->saddr.p32[0];
			k.sport = f->dport;
			k.dport = f->sport;
		} else {
			k.saddr = f->saddr.p32[0];
			k.daddr = f->daddr.p32[0];
			k.sport = f->sport;
			k.dport = f->dport;
		}
		k.nexthdr = f->nexthdr;
		k.flags = flags;
		return bpf_map_lookup_elem(&cilium_ct4, &k);
	} else {
		struct ipv6_ct_tuple k = {};

		if (reverse) {
			__builtin_memcpy(k.saddr, f->daddr.addr, 16);
			__builtin_memcpy(k.daddr, f->saddr.addr, 16);
			k.sport = f->dport;
			k.dport = f->sport;
		} else {
			__builtin_memcpy(k.saddr, f->saddr.addr, 16);
			__builtin_memcpy(k.daddr, f->daddr.addr, 16);
			k.sport = f->sport;
			k.dport = f->dport;
		}
		k.nexthdr = f->nexthdr;
		k.flags = flags;
		return bpf_map_lookup_elem(&cilium_ct6, &k);
	}
}

static __always_inline struct ct_entry *ct_lookup_live(const struct flow *f, int reverse,
						       __u8 flags, __u32 now)
{
	struct ct_entry *e = ct_lookup_one(f, reverse, flags);

	if (e && e->lifetime < now)
		return NULL;	/* expired: GC will remove it */
	return e;
}

static __always_inline int ct_is_closed(const struct ct_entry *e)
{
	return (e->flags & (CT_F_RX_CLOSING | CT_F_TX_CLOSING)) ==
	       (CT_F_RX_CLOSING | CT_F_TX_CLOSING);
}

/* Take one unit of lxc_id's budget; 0 when it is used up for this window. */
static __always_inline int ct_budget_take(__u16 lxc_id, __u32 now)
{
	__u32 key = lxc_id;
	struct ct_budget *b = bpf_map_lookup_elem(&cilium_ct_budget, &key);

	if (!b)
		return 1;
	if (now - b->window_start >= CT_BUDGET_WINDOW) {
		/* racing CPUs may both reset: the budget is a bound, not a count */
		b->window_start = now;
		b->count = 0;
	}
	if (b->count >= CT_EP_BUDGET)
		return 0;
	__sync_fetch_and_add(&b->count, 1);
	return 1;
}

/* Give one unit back to lxc_id. No "count > 0" check: check-then-decrement
 * races (two CPUs refunding the last unit) and an unsigned count wrapped to
 * 4 billion locked the endpoint out for the rest of the window. The count is
 * signed: it goes negative when entries of the previous window get their
 * first reply after a reset; the units it lends match entries that stopped
 * being unreplied. It stops at -CT_EP_BUDGET (give or take the CPUs racing
 * past the check): ct_update's first-reply test is not atomic, so two CPUs
 * handling one entry's first replies both refund it, and an endpoint
 * answering its own flows from two CPUs could otherwise drive the count
 * down without end and create unreplied entries without limit. */
static __always_inline void ct_budget_give(__u16 lxc_id)
{
	__u32 key = lxc_id;
	struct ct_budget *b = bpf_map_lookup_elem(&cilium_ct_budget, &key);

	if (b && b->count > -CT_EP_BUDGET)
		__sync_fetch_and_add(&b->count, -1);
}

/* The first reply of an entry gives its unit back to the endpoint it was
 * charged to: the originator for CT_EGRESS entries, the originator's peer
 * for CT_INGRESS ones. 'f' is the reply, so the roles are swapped; a
 * hairpin reply (CT_F_LOOPBACK) goes to the loopback address, and its
 * sender is the originator itself. */
static __always_inline void ct_budget_refund(const struct flow *f, __u8 key_flags,
					     __u16 entry_flags)
{
	const union v6addr *owner = key_flags == CT_EGRESS && !(entry_flags & CT_F_LOOPBACK) ?
				    &f->daddr : &f->saddr;
	struct endpoint_info *ep = lookup_lxc(f, owner);

	if (ep)
		ct_budget_give(ep->lxc_id);
}

/* Account a packet of entry e and move its lifetime; returns 1 if this was
 * the entry's first reply. Sets the CT_MONITOR_* bits in *monitor. */
static __always_inline int ct_update(struct ct_entry *e, const struct flow *f,
				     int is_reply, __u32 len, __u32 now, __u8 *monitor)
{
	__u32 lifetime = CT_LIFETIME_NONTCP;
	__u16 flags = e->flags;
	int first_reply = 0;

	__sync_fetch_and_add(&e->packets, 1);
	__sync_fetch_and_add(&e->bytes, len);

	if (f->nexthdr == IPPROTO_TCP) {
		__u8 tf = f->tcp_flags;

		if (tf & TCP_FLAG_RST) {
			flags |= CT_F_RX_CLOSING | CT_F_TX_CLOSING;
		} else if (tf & TCP_FLAG_FIN) {
			flags |= is_reply ? CT_F_RX_CLOSING : CT_F_TX_CLOSING;
		}
		if (!(tf & TCP_FLAG_SYN) || (tf & TCP_FLAG_ACK))
			flags |= CT_F_SEEN_NON_SYN;
		if ((flags & (CT_F_RX_CLOSING | CT_F_TX_CLOSING)) ==
		    (CT_F_RX_CLOSING | CT_F_TX_CLOSING))
			lifetime = CT_CLOSE_TIMEOUT;
		else if (flags & CT_F_SEEN_NON_SYN)
			lifetime = CT_LIFETIME_TCP;
		else
			lifetime = CT_SYN_TIMEOUT;
	}
	if (is_reply && !(flags & CT_F_SEEN_REPLY)) {
		flags |= CT_F_SEEN_REPLY;
		first_reply = 1;
	}
	if (flags != e->flags) {
		e->flags = flags;
		*monitor |= CT_MONITOR_STATE;
	}
	if (now - e->last_report >= CT_REPORT_INTERVAL) {
		/* racing CPUs may both report: a few traces, not one per packet */
		e->last_report = now;
		*monitor |= CT_MONITOR_INTERVAL;
	}
	if (!(flags & CT_F_SEEN_REPLY)) {
		/* unreplied: the creation deadline stands, closing may shorten it */
		if (lifetime == CT_CLOSE_TIMEOUT && e->lifetime > now + lifetime)
			e->lifetime = now + lifetime;
		return 0;
	}
	if (e->lifetime != now + lifetime)
		e->lifetime = now + lifetime;
	return first_reply;
}

/* What a tracked connection's entry says about address translation: the
 * service it went through (lib/lb_lxc.h) and whether its source was
 * rewritten to the loopback address (hairpin). */
struct ct_nat {
	__u16 rev_nat_index;	/* 0: no service */
	__u16 flags;		/* the entry's CT_F_* */
};

/* Classify f against the CT table from the point of view of a program whose
 * own originator flag is 'dir'. On CT_ESTABLISHED / CT_REPLY the entry is
 * updated, *monitor gets its CT_MONITOR_* bits (0 otherwise) and *nat the
 * entry's translation. */
static __always_inline int ct_lookup(const struct flow *f, __u8 dir, __u32 len,
				     __u32 now, __u32 *src_sec_id, __u8 *monitor,
				     struct ct_nat *nat)
{
	__u8 key_flags, other = dir == CT_EGRESS ? CT_INGRESS : CT_EGRESS;
	struct ct_entry *e;

	*monitor = 0;
	nat->rev_nat_index = 0;
	nat->flags = 0;
	e = ct_lookup_live(f, 0, dir, now);
	if (e) {
		/* a new SYN on a fully closed connection re-opens it: re-evaluate policy */
		if (f->nexthdr == IPPROTO_TCP && ct_is_closed(e) &&
		    (f->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN)
			return CT_NEW;
		ct_update(e, f, 0, len, now, monitor);
		*src_sec_id = e->src_sec_id;
		nat->rev_nat_index = e->rev_nat_index;
		nat->flags = e->flags;
		return CT_ESTABLISHED;
	}
	key_flags = other;
	e = ct_lookup_live(f, 1, other, now);
	if (!e) {
		key_flags = dir;
		e = ct_lookup_live(f, 1, dir, now);
	}
	if (e) {
		if (ct_update(e, f, 1, len, now, monitor))
			ct_budget_refund(f, key_flags, e->flags);
		*src_sec_id = e->src_sec_id;
		nat->rev_nat_index = e->rev_nat_index;
		nat->flags = e->flags;
		return CT_REPLY;
	}
	e = ct_lookup_live(f, 0, other, now);
	if (e) {
		ct_update(e, f, 0, len, now, monitor);
		*src_sec_id = e->src_sec_id;
		return CT_ESTABLISHED;
	}
	return CT_NEW;
}

/* ICMP error: is the quoted packet part of a tracked connection?
 * 'from_endpoint': the error was sent by the local endpoint (from-container),
 * which is no router: it can only report on packets addressed to itself.
 * *nat: the translation of the recipient's own flow the error is about. */
static __always_inline int ct_lookup_related(struct __sk_buff *skb, const struct flow *f,
					     __u32 now, int from_endpoint, struct ct_nat *nat)
{
	struct flow inner = {};
	struct ct_entry *e;
	int ret;

	nat->rev_nat_index = 0;
	nat->flags = 0;

	if (f->family == 4)
		ret = ipv4_parse_hdr(skb, f->l4_off + 8, &inner, 1);
	else
		ret = ipv6_parse_hdr(skb, f->l4_off + 8, &inner, 1);
	if (ret < 0)
		return CT_NEW;
	/* The quoted packet must have been sent by the error's recipient:
	 * otherwise anyone who knows a tracked tuple could use forged errors
	 * to reach any destination past policy. */
	if (!ipv6_addr_equals(&inner.saddr, f->daddr.addr))	/* IPv4: p32[0], rest 0 */
		return CT_NEW;
	/* ...and, from an endpoint, sent to the error's sender: otherwise a
	 * container could inject errors into flows between two others. Errors
	 * arriving from the host side may come from any router on the path. */
	if (from_endpoint && !ipv6_addr_equals(&inner.daddr, f->saddr.addr))
		return CT_NEW;
	e = ct_lookup_live(&inner, 0, CT_EGRESS, now);
	if (e) {
		/* a flow the recipient opened: its translation, if a service's */
		nat->rev_nat_index = e->rev_nat_index;
		nat->flags = e->flags;
		return CT_RELATED;
	}
	if (ct_lookup_live(&inner, 0, CT_INGRESS, now) ||
	    ct_lookup_live(&inner, 1, CT_EGRESS, now) ||
	    ct_lookup_live(&inner, 1, CT_INGRESS, now))
		return CT_RELATED;
	return CT_NEW;
}

/* Create the entry of a NEW flow that policy allowed, charged to lxc_id;
 * 'nat': the service the flow was translated for (0 when none) and
 * CT_F_LOOPBACK for a hairpin flow.
 * Returns 0 or DROP_CT_CREATE_FAILED (budget used up, map update failed). */
static __always_inline int ct_create(const struct flow *f, __u8 dir, __u32 src_sec_id,
				     __u32 len, __u32 now, __u16 lxc_id,
				     const struct ct_nat *nat)
{
	struct ct_entry e = {};
	int ret;

	if (!ct_budget_take(lxc_id, now))
		return DROP_CT_CREATE_FAILED;

	e.packets = 1;
	e.bytes = len;
	e.src_sec_id = src_sec_id;
	e.rev_nat_index = nat->rev_nat_index;
	e.flags = nat->flags;
	e.lifetime = now + CT_LIFETIME_NONTCP;
	if (f->nexthdr == IPPROTO_TCP) {
		__u8 tf = f->tcp_flags;

		/* no reply seen yet: short, whatever the flags */
		e.lifetime = now + CT_SYN_TIMEOUT;
		if ((tf & (TCP_FLAG_SYN | TCP_FLAG_ACK)) != TCP_FLAG_SYN)
			e.flags |= CT_F_SEEN_NON_SYN;
		if (tf & (TCP_FLAG_RST | TCP_FLAG_FIN)) {
			e.flags |= CT_F_RX_CLOSING | CT_F_TX_CLOSING;
			e.lifetime = now + CT_CLOSE_TIMEOUT;
		}
	}
	e.last_report = now;

	if (f->family == 4) {
		struct ipv4_ct_tuple k = {};

		k.saddr = f->saddr.p32[0];
		k.daddr = f->daddr.p32[0];
		k.sport = f->sport;
		k.dport = f->dport;
		k.nexthdr = f->nexthdr;
		k.flags = dir;
		ret = bpf_map_update_elem(&cilium_ct4, &k, &e, BPF_ANY);
	} else {
		struct ipv6_ct_tuple k = {};

		__builtin_memcpy(k.saddr, f->saddr.addr, 16);
		__builtin_memcpy(k.daddr, f->daddr.addr, 16);
		k.sport = f->sport;
		k.dport = f->dport;
		k.nexthdr = f->nexthdr;
		k.flags = dir;
		ret = bpf_map_update_elem(&cilium_ct6, &k, &e, BPF_ANY);
	}
	if (ret < 0) {
		ct_budget_give(lxc_id);	/* no entry: nothing to charge */
		return DROP_CT_CREATE_FAILED;
	}
	return 0;
}

#endif /* __LIB_CONNTRACK_H_ */
