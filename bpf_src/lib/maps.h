/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* All datapath maps. Every map is pinned by name (LIBBPF_PIN_BY_NAME) under
 * the loader's pin root (default /sys/fs/bpf/tc/globals), so enforcement
 * survives an agent restart and the restarted agent reuses the maps. */
#ifndef __LIB_MAPS_H_
#define __LIB_MAPS_H_

#include "common.h"
#include "prefilter.h"

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct endpoint_info);
	__uint(max_entries, ENDPOINTS_MAP_SIZE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilium_ep_ifindex __section(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct endpoint_key);
	__type(value, struct endpoint_info);
	__uint(max_entries, ENDPOINTS_MAP_SIZE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilium_lxc __section(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct policy_key);
	__type(value, struct policy_entry);
	__uint(max_entries, POLICY_MAP_SIZE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilium_policy __section(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct ipcache_key);
	__type(value, struct remote_endpoint_info);
	__uint(max_entries, IPCACHE_MAP_SIZE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilium_ipcache __section(".maps");

/* other nodes' ranges -> their IPv4 (lib/encap.h), written by the node handler */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct tunnel_map_key);
	__type(value, struct tunnel_map_value);
	__uint(max_entries, TUNNEL_MAP_SIZE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilium_tunnel_map __section(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct ipv4_ct_tuple);
	__type(value, struct ct_entry);
	__uint(max_entries, CT_MAP_SIZE);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilium_ct4 __section(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct ipv6_ct_tuple);
	__type(value, struct ct_entry);
	__uint(max_entries, CT_MAP_SIZE);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilium_ct6 __section(".maps");

/* first fragment's ports by (addresses, fragment id, protocol), read by the
 * datagram's later fragments; LRU: a datagram whose entry is gone is dropped */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct ipv4_frag_id);
	__type(value, struct frag_l4ports);
	__uint(max_entries, FRAG_MAP_SIZE);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilium_ipv4_frag_datagrams __section(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct ipv6_frag_id);
	__type(value, struct frag_l4ports);
	__uint(max_entries, FRAG_MAP_SIZE);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilium_ipv6_frag_datagrams __section(".maps");

/* per-endpoint budget of unreplied conntrack entries (lib/conntrack.h) */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct ct_budget);
	__uint(max_entries, 65536);	/* every lxc_id */
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilium_ct_budget __section(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__type(key, struct metrics_key);
	__type(value, struct metrics_value);
	__uint(max_entries, METRICS_MAP_SIZE);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilium_metrics __section(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERF_EVENT_ARRAY);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, sizeof(__u32));
	/* max_entries 0: libbpf sizes it to the number of possible CPUs */
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilium_events __section(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct datapath_config);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilium_config __section(".maps");

static __always_inline struct endpoint_info *lookup_ep_ifindex(__u32 ifindex)
{
	return bpf_map_lookup_elem(&cilium_ep_ifindex, &ifindex);
}

static __always_inline struct endpoint_info *lookup_lxc4(__u32 ip4)
{
	struct endpoint_key key = {};

	key.ip4 = ip4;
	key.family = 4;
	return bpf_map_lookup_elem(&cilium_lxc, &key);
}

static __always_inline struct endpoint_info *lookup_lxc6(const union v6addr *ip6)
{
	struct endpoint_key key = {};

	__builtin_memcpy(key.ip6, ip6->addr, 16);
	key.family = 6;
	return bpf_map_lookup_elem(&cilium_lxc, &key);
}

static __always_inline struct endpoint_info *lookup_lxc(const struct flow *f,
							const union v6addr *addr)
{
	if (f->family == 4)
		return lookup_lxc4(addr->p32[0]);
	return lookup_lxc6(addr);
}

/* ipcache: longest-prefix match of addr -> security identity (world fallback) */
static __always_inline __u32 ipcache_identity(const struct flow *f,
					      const union v6addr *addr)
{
	struct remote_endpoint_info *info;
	struct ipcache_key key = {};

	/* Link-local peers can only be the host on the other end of the veth. */
	if (f->family == 6 && (addr->p32[0] & bpf_htonl(0xffc00000)) == bpf_htonl(0xfe800000))
		return IDENTITY_HOST;
	key.family = f->family;
	if (f->family == 4) {
		key.prefixlen = 32 + 32;
		key.ip4 = addr->p32[0];
	} else {
		key.prefixlen = 32 + 128;
		__builtin_memcpy(key.ip6, addr->addr, 16);
	}
	info = bpf_map_lookup_elem(&cilium_ipcache, &key);
	if (info && info->sec_identity)
		return info->sec_identity;
	return IDENTITY_WORLD;
}

static __always_inline __u32 config_flags(void)
{
	__u32 zero = 0;
	struct datapath_config *cfg = bpf_map_lookup_elem(&cilium_config, &zero);

	return cfg ? cfg->flags : 0;
}

#endif /* __LIB_MAPS_H_ */
