/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
#ifndef __LIB_IPV4_H_
#define __LIB_IPV4_H_

#include "common.h"
#include "l4.h"
#include "maps.h"

#define IPV4_OFF	ETH_HLEN
#define IPV4_MF		0x2000
#define IPV4_OFFSET	0x1fff

/* Parse an IPv4 header at 'off' into f (addresses, protocol, L4 offset).
 * Fragments (as Cilium tracks them): later fragments, which carry no L4
 * header, take their ports from cilium_ipv4_frag_datagrams under (addresses,
 * IP id, protocol) (PARSE_FRAG_NOT_FOUND without them); a first fragment is
 * only marked (f->frag_first): ipv4_frag_record() writes its entry once the
 * packet is forwarded, so that spoofed or denied datagrams never take room
 * in the shared LRU. A quoted packet ('inner') is only parsed, never tracked. */
static __always_inline int ipv4_parse_hdr(struct __sk_buff *skb, __u32 off,
					  struct flow *f, int inner)
{
	struct ipv4_frag_id fid = {};
	struct frag_l4ports *known;
	struct iphdr ip;
	__u32 ihl;
	int ret;

	if (bpf_skb_load_bytes(skb, off, &ip, sizeof(ip)) < 0)
		return PARSE_INVALID;
	if (ip.version != 4 || ip.ihl < 5)
		return PARSE_INVALID;
	ihl = ip.ihl * 4;
	f->family = 4;
	f->saddr.p32[0] = ip.saddr;
	f->daddr.p32[0] = ip.daddr;
	f->nexthdr = ip.protocol;
	f->l4_off = off + ihl;
	if (inner) {
		if (ip.frag_off & bpf_htons(IPV4_OFFSET))
			return 0;
		return parse_l4(skb, f, inner);
	}
	f->frag_id = ip.id;
	if (ip.frag_off & bpf_htons(IPV4_OFFSET)) {
		fid.daddr = ip.daddr;
		fid.saddr = ip.saddr;
		fid.id = ip.id;
		fid.proto = ip.protocol;
		known = bpf_map_lookup_elem(&cilium_ipv4_frag_datagrams, &fid);
		if (!known)
			return PARSE_FRAG_NOT_FOUND;
		f->sport = known->sport;
		f->dport = known->dport;
		f->frag_later = 1;
		return 0;
	}
	ret = parse_l4(skb, f, inner);
	if (ret == 0 && (ip.frag_off & bpf_htons(IPV4_MF)))
		f->frag_first = 1;
	return ret;
}

/* The first fragment f was forwarded: its datagram's later fragments may
 * follow with its ports. BPF_ANY: an IP id reused by a newer datagram
 * takes the newer ports. */
static __always_inline void ipv4_frag_record(const struct flow *f)
{
	struct ipv4_frag_id fid = {};
	struct frag_l4ports ports = {};

	fid.daddr = f->daddr.p32[0];
	fid.saddr = f->saddr.p32[0];
	fid.id = (__u16)f->frag_id;
	fid.proto = f->nexthdr;
	ports.sport = f->sport;
	ports.dport = f->dport;
	ports.nexthdr = f->nexthdr;
	bpf_map_update_elem(&cilium_ipv4_frag_datagrams, &fid, &ports, BPF_ANY);
}

/* Decrement the TTL, fixing the header checksum. Returns -1 if the packet
 * must not be forwarded by us (TTL expiring: let the stack send the ICMP). */
static __always_inline int ipv4_dec_ttl(struct __sk_buff *skb)
{
	__u8 ttl, new_ttl;

	if (bpf_skb_load_bytes(skb, IPV4_OFF + offsetof(struct iphdr, ttl), &ttl, 1) < 0)
		return -1;
	if (ttl <= 1)
		return -1;
	new_ttl = ttl - 1;
	if (bpf_l3_csum_replace(skb, IPV4_OFF + offsetof(struct iphdr, check),
				ttl, new_ttl, 2) < 0)
		return -1;
	if (bpf_skb_store_bytes(skb, IPV4_OFF + offsetof(struct iphdr, ttl),
				&new_ttl, 1, 0) < 0)
		return -1;
	return 0;
}

#endif /* __LIB_IPV4_H_ */
