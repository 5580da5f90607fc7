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

#endif /* __LIB_ETH_H_ */
