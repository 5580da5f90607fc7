// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* docker-cilium XDP prefilter (Cilium's bpf_xdp.c prefilter part).
 *
 * Attached to one device (cilium-agent --prefilter-device, native or generic
 * mode): a frame whose IPv4/IPv6 source falls in a prefix of
 * cilium_cidr_v4_dyn / cilium_cidr_v6_dyn is dropped before the kernel
 * allocates an skb for it; everything else passes to the stack unchanged.
 * Up to two VLAN tags (802.1Q / 802.1ad) are looked through, so a tagged frame
 * cannot carry a denied source past the filter.
 *
 * Drops are counted in cilium_metrics as reason DROP_POLICY_CIDR, direction
 * METRIC_INGRESS (no perf event per packet: a flood would flood the monitor
 * too). The maps are the endpoint object's pinned maps, reused by name.
 */
#include "lib/common.h"
#include "lib/maps.h"
#include "lib/drop.h"

#ifndef ETH_P_8021Q
#define ETH_P_8021Q	0x8100
#endif
#ifndef ETH_P_8021AD
#define ETH_P_8021AD	0x88A8
#endif

struct vlan_tag {
	__be16 tci;
	__be16 proto;	/* the encapsulated ethertype */
};

static __always_inline int prefilter_drop(struct xdp_md *ctx)
{
	update_metrics(DROP_POLICY_CIDR, METRIC_INGRESS,
		       (__u32)(ctx->data_end - ctx->data));
	return XDP_DROP;
}

__section("xdp")
int cil_xdp_entry(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	void *l3 = data + ETH_HLEN;
	__be16 proto;
	int i;

	if (data + ETH_HLEN > data_end)
		return XDP_PASS;	/* not Ethernet: the stack decides */
	proto = eth->h_proto;
#pragma unroll
	for (i = 0; i < 2; i++) {
		struct vlan_tag *tag = l3;

		if (proto != bpf_htons(ETH_P_8021Q) && proto != bpf_htons(ETH_P_8021AD))
			break;
		if ((void *)(tag + 1) > data_end)
			return XDP_PASS;
		proto = tag->proto;
		l3 = tag + 1;
	}

	if (proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip4 = l3;
		struct lpm_v4_key key = { .prefixlen = 32 };

		if ((void *)(ip4 + 1) > data_end)
			return XDP_PASS;
		__builtin_memcpy(key.addr, &ip4->saddr, sizeof(key.addr));
		if (bpf_map_lookup_elem(&cilium_cidr_v4_dyn, &key))
			return prefilter_drop(ctx);
	} else if (proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = l3;
		struct lpm_v6_key key = { .prefixlen = 128 };

		if ((void *)(ip6 + 1) > data_end)
			return XDP_PASS;
		__builtin_memcpy(key.addr, &ip6->saddr, sizeof(key.addr));
		if (bpf_map_lookup_elem(&cilium_cidr_v6_dyn, &key))
			return prefilter_drop(ctx);
	}
	return XDP_PASS;
}

char _license[] __section("license") = "Dual BSD/GPL";
