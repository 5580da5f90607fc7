/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Forwarding a frame as the router we are, in one read and one write of its
 * first bytes: a TCP sender's packet is a clone (TCP keeps the original for
 * retransmission), so the first write copies its headers, and every helper
 * call on the hot path costs as much as a map lookup. */
#ifndef __LIB_ROUTE_H_
#define __LIB_ROUTE_H_

#include "common.h"

#define ROUTE_IPV4_LEN	(ETH_HLEN + 12)	/* through the IPv4 header checksum */
#define ROUTE_IPV6_LEN	(ETH_HLEN + 8)	/* through the IPv6 hop limit */

/* The Ethernet addresses set to dmac/smac and the TTL (hop limit) decremented,
 * the IPv4 header checksum updated as the kernel's ip_decrease_ttl() does.
 * Returns 0; -1 when the packet is not ours to forward (TTL expiring: the
 * stack answers it; or headers that cannot be read), nothing written; -2
 * when the write failed. */
static __always_inline int l3_route(struct __sk_buff *skb, __u8 family, const __u8 *smac,
				    const __u8 *dmac)
{
	__u8 hdr[ROUTE_IPV4_LEN] __attribute__((aligned(4)));
	__u32 check;

	if (family == 4) {
		if (bpf_skb_load_bytes(skb, 0, hdr, ROUTE_IPV4_LEN) < 0)
			return -1;
		if (hdr[ETH_HLEN + 8] <= 1)
			return -1;
		hdr[ETH_HLEN + 8]--;
		/* the checksum, in network order, grows by 0x0100 (one's
		 * complement: the carry wraps around) */
		check = ((__u32)hdr[ETH_HLEN + 10] << 8 | hdr[ETH_HLEN + 11]) + 0x0100;
		check += check >= 0xFFFF;
		hdr[ETH_HLEN + 10] = check >> 8;
		hdr[ETH_HLEN + 11] = check;
	} else {
		if (bpf_skb_load_bytes(skb, 0, hdr, ROUTE_IPV6_LEN) < 0)
			return -1;
		if (hdr[ETH_HLEN + 7] <= 1)
			return -1;
		hdr[ETH_HLEN + 7]--;	/* no L3 checksum in IPv6 */
	}
	__builtin_memcpy(hdr, dmac, 6);
	__builtin_memcpy(hdr + 6, smac, 6);
	if (bpf_skb_store_bytes(skb, 0, hdr, family == 4 ? ROUTE_IPV4_LEN : ROUTE_IPV6_LEN, 0) < 0)
		return -2;
	return 0;
}

#endif /* __LIB_ROUTE_H_ */
