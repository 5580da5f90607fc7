/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The XDP prefilter's deny lists (Cilium's cidrmap): source prefixes that
 * bpf_xdp.c drops on the prefilter device before the stack sees them.
 * maps.h includes this header, so the endpoint object pins the two (empty,
 * unallocated) tries as well: they exist whenever the datapath does, the
 * agent and `cilium map` open them like every other map, and `cilium
 * cleanup` removes them with the rest. */
#ifndef __LIB_PREFILTER_H_
#define __LIB_PREFILTER_H_

#include "common.h"

#ifndef CIDR_MAP_SIZE
/* prefixes per family (Cilium's maxLKeys); BPF_F_NO_PREALLOC: costs nothing empty */
#define CIDR_MAP_SIZE		65536
#endif

/* LPM trie keys: prefix length, then the address in network order */
struct lpm_v4_key {
	__u32 prefixlen;
	__u8  addr[4];
};

struct lpm_v6_key {
	__u32 prefixlen;
	__u8  addr[16];
};

struct lpm_val {
	__u8  flags;	/* unused: presence is the verdict */
};

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct lpm_v4_key);
	__type(value, struct lpm_val);
	__uint(max_entries, CIDR_MAP_SIZE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilium_cidr_v4_dyn __section(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct lpm_v6_key);
	__type(value, struct lpm_val);
	__uint(max_entries, CIDR_MAP_SIZE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilium_cidr_v6_dyn __section(".maps");

#endif /* __LIB_PREFILTER_H_ */
