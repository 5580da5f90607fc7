/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
#ifndef __LIB_ETH_H_
#define __LIB_ETH_H_

#include "common.h"

#ifndef ETH_P_ARP
#define ETH_P_ARP 0x0806
#endif

static __always_inline int eth_load(struct __sk_buff *skb, struct ethhdr *eth)
{
	return bpf_skb_load_bytes(skb, 0, eth, sizeof(*eth));
}

static __always_inline int eth_addrcmp(const __u8 *a, const __u8 *b)
{
	/* non-zero when different; bytewise: stack accesses must be aligned */
	return (a[0] ^ b[0]) | (a[1] ^ b[1]) | (a[2] ^ b[2]) |
	       (a[3] ^ b[3]) | (a[4] ^ b[4]) | (a[5] ^ b[5]);
}

/* Rewrite the Ethernet header like a router forwarding to dmac. Invalidates
 * any direct packet pointers. */
static __always_inline int eth_rewrite(struct __sk_buff *skb, const __u8 *smac,
				       const __u8 *dmac)
{
	__u8 hdr[12];

	__builtin_memcpy(hdr, dmac, 6);
	__builtin_memcpy(hdr + 6, smac, 6);
	return bpf_skb_store_bytes(skb, 0, hdr, sizeof(hdr), 0);
}

#endif /* __LIB_ETH_H_ */
