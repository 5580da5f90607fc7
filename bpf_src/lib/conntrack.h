/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Connection tracking (cilium_ct4 / cilium_ct6, LRU hashes).
 *
 * An entry is created only after policy allowed a NEW flow; it is keyed by the
 * tuple as seen from the originator (saddr = originator) and a flags byte
 * telling which program created it (CT_EGRESS: from-container, the local
 * endpoint opened it; CT_INGRESS: to-container, the peer opened it). Packets
 * of the same tuple (established) or of its reverse (replies) pass without a
 * policy lookup. Expired entries are treated as absent; the agent garbage
 * collects them (CTMap.gc). */
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

static __always_inline void ct_update(struct ct_entry *e, const struct flow *f,
				      int is_reply, __u32 len, __u32 now)
{
	__u32 lifetime = CT_LIFETIME_NONTCP;
	__u16 flags = e->flags;

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
	if (flags != e->flags)
		e->flags = flags;
	if (e->lifetime != now + lifetime)
		e->lifetime = now + lifetime;
}

/* Classify f against the CT table from the point of view of a program whose
 * own originator flag is 'dir'. On CT_ESTABLISHED / CT_REPLY the entry is
 * updated. */
static __always_inline int ct_lookup(const struct flow *f, __u8 dir, __u32 len,
				     __u32 now, __u32 *src_sec_id)
{
	__u8 other = dir == CT_EGRESS ? CT_INGRESS : CT_EGRESS;
	struct ct_entry *e;

	e = ct_lookup_live(f, 0, dir, now);
	if (e) {
		/* a new SYN on a fully closed connection re-opens it: re-evaluate policy */
		if (f->nexthdr == IPPROTO_TCP && ct_is_closed(e) &&
		    (f->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN)
			return CT_NEW;
		ct_update(e, f, 0, len, now);
		*src_sec_id = e->src_sec_id;
		return CT_ESTABLISHED;
	}
	e = ct_lookup_live(f, 1, other, now);
	if (!e)
		e = ct_lookup_live(f, 1, dir, now);
	if (e) {
		ct_update(e, f, 1, len, now);
		*src_sec_id = e->src_sec_id;
		return CT_REPLY;
	}
	e = ct_lookup_live(f, 0, other, now);
	if (e) {
		ct_update(e, f, 0, len, now);
		*src_sec_id = e->src_sec_id;
		return CT_ESTABLISHED;
	}
	return CT_NEW;
}

/* ICMP error: is the quoted packet part of a tracked connection? */
static __always_inline int ct_lookup_related(struct __sk_buff *skb, const struct flow *f,
					     __u32 now)
{
	struct flow inner = {};
	int ret;

	if (f->family == 4)
		ret = ipv4_parse_hdr(skb, f->l4_off + 8, &inner, 1);
	else
		ret = ipv6_parse_hdr(skb, f->l4_off + 8, &inner, 1);
	if (ret < 0)
		return CT_NEW;
	/* The quoted packet must have been sent by the error's recipient:
	 * otherwise anyone who knows a tracked tuple could use forged errors
	 * to reach any destination past policy. */
	if (inner.saddr.p32[0] != f->daddr.p32[0] || inner.saddr.p32[1] != f->daddr.p32[1] ||
	    inner.saddr.p32[2] != f->daddr.p32[2] || inner.saddr.p32[3] != f->daddr.p32[3])
		return CT_NEW;
	if (ct_lookup_live(&inner, 0, CT_EGRESS, now) ||
	    ct_lookup_live(&inner, 0, CT_INGRESS, now) ||
	    ct_lookup_live(&inner, 1, CT_EGRESS, now) ||
	    ct_lookup_live(&inner, 1, CT_INGRESS, now))
		return CT_RELATED;
	return CT_NEW;
}

static __always_inline int ct_create(const struct flow *f, __u8 dir, __u32 src_sec_id,
				     __u32 len, __u32 now)
{
	struct ct_entry e = {};

	e.packets = 1;
	e.bytes = len;
	e.src_sec_id = src_sec_id;
	e.lifetime = now + CT_LIFETIME_NONTCP;
	if (f->nexthdr == IPPROTO_TCP) {
		__u8 tf = f->tcp_flags;

		if ((tf & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN) {
			e.lifetime = now + CT_SYN_TIMEOUT;
		} else {
			e.flags |= CT_F_SEEN_NON_SYN;
			e.lifetime = now + CT_LIFETIME_TCP;
		}
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
		return bpf_map_update_elem(&cilium_ct4, &k, &e, BPF_ANY);
	} else {
		struct ipv6_ct_tuple k = {};

		__builtin_memcpy(k.saddr, f->saddr.addr, 16);
		__builtin_memcpy(k.daddr, f->daddr.addr, 16);
		k.sport = f->sport;
		k.dport = f->dport;
		k.nexthdr = f->nexthdr;
		k.flags = dir;
		return bpf_map_update_elem(&cilium_ct6, &k, &e, BPF_ANY);
	}
}

#endif /* __LIB_CONNTRACK_H_ */
