/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
#ifndef __LIB_IPV6_H_
#define __LIB_IPV6_H_

#include "common.h"
#include "l4.h"
#include "maps.h"

#define IPV6_OFF	ETH_HLEN
#define IPV6_MAX_EXTHDRS 4

#ifndef NEXTHDR_HOP
#define NEXTHDR_HOP	0
#define NEXTHDR_ROUTING	43
#define NEXTHDR_FRAGMENT 44
#define NEXTHDR_AUTH	51
#define NEXTHDR_DEST	60
#define NEXTHDR_NONE	59
#endif

static __always_inline int ipv6_addr_is_linklocal(const union v6addr *a)
{
	return a->addr[0] == 0xfe && (a->addr[1] & 0xc0) == 0x80;
}

static __always_inline int ipv6_addr_is_multicast(const union v6addr *a)
{
	return a->addr[0] == 0xff;
}

static __always_inline int ipv6_addr_is_zero(const union v6addr *a)
{
	return (a->d[0] | a->d[1]) == 0;
}

static __always_inline int ipv6_addr_equals(const union v6addr *a, const __u8 *b)
{
	const union v6addr *bb = (const union v6addr *)b;

	return a->p32[0] == bb->p32[0] && a->p32[1] == bb->p32[1] &&
	       a->p32[2] == bb->p32[2] && a->p32[3] == bb->p32[3];
}

/* Parse an IPv6 header (skipping up to IPV6_MAX_EXTHDRS extension headers;
 * more: PARSE_INVALID_EXTHDR).
 * Fragments are tracked like IPv4's (ipv4_parse_hdr), in
 * cilium_ipv6_frag_datagrams keyed by the Fragment header's id and next
 * header: a later fragment's walk ends at its Fragment header (what follows
 * is the middle of the datagram), so it has no other protocol to key on;
 * the entry holds the L4 protocol found after any further extension
 * headers of the first fragment. */
static __always_inline int ipv6_parse_hdr(struct __sk_buff *skb, __u32 off,
					  struct flow *f, int inner)
{
	struct ipv6_frag_id fid = {};
	struct frag_l4ports *known;
	struct ipv6hdr ip6;
	__u8 nh, hdr[8] __attribute__((aligned(8)));
	int i, ret, frag = 0, nonfirst_frag = 0;

	if (bpf_skb_load_bytes(skb, off, &ip6, sizeof(ip6)) < 0)
		return PARSE_INVALID;
	if (ip6.version != 6)
		return PARSE_INVALID;
	f->family = 6;
	__builtin_memcpy(f->saddr.addr, &ip6.saddr, 16);
	__builtin_memcpy(f->daddr.addr, &ip6.daddr, 16);
	nh = ip6.nexthdr;
	off += sizeof(ip6);

#pragma unroll
	for (i = 0; i < IPV6_MAX_EXTHDRS; i++) {
		if (nh != NEXTHDR_HOP && nh != NEXTHDR_ROUTING &&
		    nh != NEXTHDR_DEST && nh != NEXTHDR_FRAGMENT &&
		    nh != NEXTHDR_AUTH)
			break;
		if (bpf_skb_load_bytes(skb, off, hdr, sizeof(hdr)) < 0)
			return PARSE_INVALID;
		if (nh == NEXTHDR_FRAGMENT) {
			/* offset 0 and M clear: an atomic fragment, a whole datagram */
			frag = (*(__u16 *)&hdr[2]) & bpf_htons(0xfff9);
			f->frag_id = *(__u32 *)&hdr[4];
			f->frag_nexthdr = hdr[0];
			off += 8;
			nh = hdr[0];
			if ((*(__u16 *)&hdr[2]) & bpf_htons(0xfff8)) {
				nonfirst_frag = 1;
				break;
			}
			continue;
		}
		if (nh == NEXTHDR_AUTH)
			off += ((__u32)hdr[1] + 2) * 4;
		else
			off += ((__u32)hdr[1] + 1) * 8;
		nh = hdr[0];
	}
	/* Still an extension header after IPV6_MAX_EXTHDRS: the L4 header is
	 * out of reach, and judging the packet without its ports would let it
	 * past L4 deny rules. Dropped, as Cilium does (DROP_INVALID_EXTHDR). */
	if (!nonfirst_frag && (nh == NEXTHDR_HOP || nh == NEXTHDR_ROUTING ||
			       nh == NEXTHDR_DEST || nh == NEXTHDR_FRAGMENT ||
			       nh == NEXTHDR_AUTH))
		return PARSE_INVALID_EXTHDR;
	f->nexthdr = nh;
	f->l4_off = off;
	if (inner) {
		if (nonfirst_frag)
			return 0;
		return parse_l4(skb, f, inner);
	}
	if (nonfirst_frag) {
		fid.id = f->frag_id;
		fid.proto = f->frag_nexthdr;
		__builtin_memcpy(fid.saddr, &ip6.saddr, 16);
		__builtin_memcpy(fid.daddr, &ip6.daddr, 16);
		known = bpf_map_lookup_elem(&cilium_ipv6_frag_datagrams, &fid);
		if (!known)
			return PARSE_FRAG_NOT_FOUND;
		f->sport = known->sport;
		f->dport = known->dport;
		f->nexthdr = known->nexthdr;
		f->frag_later = 1;
		return 0;
	}
	ret = parse_l4(skb, f, inner);
	if (ret == 0 && frag)
		f->frag_first = 1;
	return ret;
}

/* The first fragment f was forwarded (see ipv4_frag_record). */
static __always_inline void ipv6_frag_record(const struct flow *f)
{
	struct ipv6_frag_id fid = {};
	struct frag_l4ports ports = {};

	fid.id = f->frag_id;
	fid.proto = f->frag_nexthdr;
	__builtin_memcpy(fid.saddr, f->saddr.addr, 16);
	__builtin_memcpy(fid.daddr, f->daddr.addr, 16);
	ports.sport = f->sport;
	ports.dport = f->dport;
	ports.nexthdr = f->nexthdr;
	bpf_map_update_elem(&cilium_ipv6_frag_datagrams, &fid, &ports, BPF_ANY);
}

/* Neighbour discovery must arrive with hop limit 255 (RFC 4861): anything
 * else was forwarded or forged and is not ND for this link. */
static __always_inline int ipv6_hoplimit_is_255(struct __sk_buff *skb)
{
	__u8 hl;

	if (bpf_skb_load_bytes(skb, IPV6_OFF + offsetof(struct ipv6hdr, hop_limit), &hl, 1) < 0)
		return 0;
	return hl == 255;
}

static __always_inline int ipv6_dec_hoplimit(struct __sk_buff *skb)
{
	__u8 hl;

	if (bpf_skb_load_bytes(skb, IPV6_OFF + offsetof(struct ipv6hdr, hop_limit), &hl, 1) < 0)
		return -1;
	if (hl <= 1)
		return -1;
	hl--;
	/* no L3 checksum in IPv6 */
	return bpf_skb_store_bytes(skb, IPV6_OFF + offsetof(struct ipv6hdr, hop_limit),
				   &hl, 1, 0);
}

#endif /* __LIB_IPV6_H_ */
