/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* VXLAN between nodes (Cilium's tunnel mode, bpf/lib/encap.h).
 *
 * cilium_vxlan is an external (collect_metadata) VXLAN device: it has no
 * remote of its own, each packet carries its outer destination and VNI as
 * tunnel metadata set here with bpf_skb_set_tunnel_key(). The VNI (the
 * key's tunnel_id) is the SENDER's security identity, so the receiving
 * node's from-overlay knows it without a lookup (identities fit the 24-bit
 * VNI: our allocators never use bits 16-23, and the local-scope bit 24 of
 * CIDR identities never names a sender).
 *
 * The outer destination is the destination's node: its ipcache entry's
 * tunnel_endpoint (a remote endpoint from the shared ipcache), else the
 * cilium_tunnel_map entry for the node range it falls in. Nothing: the
 * packet is not for another node's range and goes to the stack. */
#ifndef __LIB_ENCAP_H_
#define __LIB_ENCAP_H_

#include "common.h"
#include "maps.h"
#include "ipv4.h"
#include "ipv6.h"

/* cilium_vxlan's ifindex, 0 when the tunnel is disabled */
static __always_inline __u32 tunnel_ifindex(void)
{
	__u32 zero = 0;
	struct datapath_config *cfg = bpf_map_lookup_elem(&cilium_config, &zero);

	return cfg ? cfg->tunnel_ifindex : 0;
}

/* A container's UDP to the tunnel's port (any destination: this node's
 * cilium_vxlan listens on every address, another node's too). Its own VXLAN
 * header would name whatever identity it likes to the decapsulating
 * from-overlay (Cilium's is_encap(), DROP_ENCAP_PROHIBITED). A later
 * fragment has its first fragment's ports, from the fragment map the
 * dropped first one never entered (DROP_FRAG_NOT_FOUND). */
static __always_inline int is_encap(const struct flow *f)
{
	__u32 zero = 0;
	struct datapath_config *cfg = bpf_map_lookup_elem(&cilium_config, &zero);

	return cfg && cfg->tunnel_port && f->nexthdr == IPPROTO_UDP &&
	       f->dport == cfg->tunnel_port;
}

/* The node IPv4 (network order) that daddr lives behind, 0 = none. */
static __always_inline __u32 tunnel_endpoint_of(__u8 family, const union v6addr *daddr)
{
	struct remote_endpoint_info *info;
	struct tunnel_map_value *tun;
	struct ipcache_key ikey = {};
	struct tunnel_map_key tkey = {};

	ikey.family = family;
	tkey.family = family;
	if (family == 4) {
		ikey.prefixlen = 32 + 32;
		ikey.ip4 = daddr->p32[0];
		tkey.prefixlen = 32 + 32;
		tkey.ip4 = daddr->p32[0];
	} else {
		ikey.prefixlen = 32 + 128;
		__builtin_memcpy(ikey.ip6, daddr->addr, 16);
		tkey.prefixlen = 32 + 128;
		__builtin_memcpy(tkey.ip6, daddr->addr, 16);
	}
	info = bpf_map_lookup_elem(&cilium_ipcache, &ikey);
	if (info && info->tunnel_endpoint)
		return info->tunnel_endpoint;
	tun = bpf_map_lookup_elem(&cilium_tunnel_map, &tkey);
	return tun ? tun->endpoint4 : 0;
}

/* Whether a decapsulated packet's outer source (host order, as
 * bpf_skb_get_tunnel_key() gives it) is a node of the cluster: the node
 * handler gives every other node's address reserved:remote-node in the
 * ipcache. Anyone else reaching the tunnel port (a host on the underlay, a
 * container of another Docker network on this host) would name any
 * identity in the VNI (Cilium leaves this open: cilium/cilium#33992). */
static __always_inline int tunnel_sender_is_node(__u32 outer_saddr)
{
	struct remote_endpoint_info *info;
	struct ipcache_key key = {};

	key.family = 4;
	key.prefixlen = 32 + 32;
	key.ip4 = bpf_htonl(outer_saddr);
	info = bpf_map_lookup_elem(&cilium_ipcache, &key);
	return info && info->sec_identity == IDENTITY_REMOTE_NODE;
}

/* Encapsulate towards node 'endpoint' (network order) with 'identity' as
 * the VNI and hand the packet to cilium_vxlan's egress. A TC verdict, or
 * -DROP_WRITE_ERROR. */
static __always_inline int encap_and_redirect(struct __sk_buff *skb, __u32 ifindex,
					      __u32 endpoint, __u32 identity)
{
	struct bpf_tunnel_key key = {};
	__u32 zero = 0;
	struct datapath_config *cfg = bpf_map_lookup_elem(&cilium_config, &zero);

	/* from the address the other nodes know this one by (their
	 * from-overlay admits nothing else), not the route's choice */
	if (cfg)
		key.local_ipv4 = bpf_ntohl(cfg->node_ipv4);
	key.remote_ipv4 = bpf_ntohl(endpoint);
	key.tunnel_id = identity;
	key.tunnel_ttl = 64;
	if (bpf_skb_set_tunnel_key(skb, &key, sizeof(key), BPF_F_ZERO_CSUM_TX) < 0)
		return -DROP_WRITE_ERROR;
	return bpf_redirect(ifindex, 0);
}

/* Decrement the inner TTL / hop limit as the router we are; -1 when it
 * expires (the stack answers). */
static __always_inline int l3_dec_ttl(struct __sk_buff *skb, __u8 family)
{
	return family == 4 ? ipv4_dec_ttl(skb) : ipv6_dec_hoplimit(skb);
}

/* The destination of an IPv4/IPv6 frame (family 0: not IP). Only the fixed
 * header is read: fragments need no tracking to be forwarded by address. */
static __always_inline int load_l3_daddr(struct __sk_buff *skb, __u16 proto, union v6addr *daddr,
					 __u8 *family)
{
	*family = 0;
	if (proto == bpf_htons(ETH_P_IP)) {
		if (bpf_skb_load_bytes(skb, ETH_HLEN + offsetof(struct iphdr, daddr), &daddr->p32[0], 4) < 0)
			return -1;
		*family = 4;
	} else if (proto == bpf_htons(ETH_P_IPV6)) {
		if (bpf_skb_load_bytes(skb, ETH_HLEN + offsetof(struct ipv6hdr, daddr), daddr->addr, 16) < 0)
			return -1;
		*family = 6;
	}
	return 0;
}

#endif /* __LIB_ENCAP_H_ */
