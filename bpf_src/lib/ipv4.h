/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
#ifndef __LIB_IPV4_H_
#define __LIB_IPV4_H_

#include "common.h"
#include "l4.h"

#define IPV4_OFF	ETH_HLEN

/* Parse an IPv4 header at 'off' into f (addresses, protocol, L4 offset).
 * Non-first fragments carry no L4 header: ports stay 0. */
static __always_inline int ipv4_parse_hdr(struct __sk_buff *skb, __u32 off,
					  struct flow *f, int inner)
{
	struct iphdr ip;
	__u32 ihl;

	if (bpf_skb_load_bytes(skb, off, &ip, sizeof(ip)) < 0)
		return -1;
	if (ip.version != 4 || ip.ihl < 5)
		return -1;
	ihl = ip.ihl * 4;
	f->family = 4;
	f->saddr.p32[0] = ip.saddr;
	f->daddr.p32[0] = ip.daddr;
	f->nexthdr = ip.protocol;
	f->l4_off = off + ihl;
	if (ip.frag_off & bpf_htons(0x1fff))
		return 0;	/* non-first fragment */
	return parse_l4(skb, f, inner);
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
