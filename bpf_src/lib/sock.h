/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Maps of the socket load balancer (bpf_sock.c), in the shape of Cilium's.
 *
 * cilium_lb{4,6}_reverse_sk remembers, per socket (cookie) and backend, the
 * frontend a connect/sendmsg was translated from, so recvmsg (UDP replies)
 * and getpeername give the application the VIP back. Entries are written on
 * every translation; the LRU drops those of old sockets.
 * cilium_lb_sock_hostns holds the network namespace cookie of the agent (the
 * host): only sockets of that namespace are translated, containers are
 * balanced by bpf_lxc.c (Cilium's --bpf-lb-sock-hostns-only). 0 = translate
 * nothing.
 *
 * The service maps themselves are lib/lb.h's. Mirrored by
 * docker_cilium/datapath/maps/socklb.py.
 */
#ifndef __LIB_SOCK_H_
#define __LIB_SOCK_H_

#include "common.h"

#ifndef LB_REVERSE_SK_MAP_SIZE
#define LB_REVERSE_SK_MAP_SIZE	262144
#endif

struct ipv4_revnat_tuple {
	__u64 cookie;		/* socket cookie */
	__be32 address;		/* backend */
	__be16 port;		/* backend port */
	__u16 pad;
};

struct ipv4_revnat_entry {
	__be32 address;		/* frontend (VIP) */
	__be16 port;		/* frontend port */
	__u16 rev_nat_index;	/* the service ID */
};

struct ipv6_revnat_tuple {
	__u64 cookie;
	union v6addr address;
	__be16 port;
	__u8 pad[6];
};

struct ipv6_revnat_entry {
	union v6addr address;
	__be16 port;
	__u16 rev_nat_index;
	__u8 pad[4];		/* union v6addr aligns to 8 */
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct ipv4_revnat_tuple);
	__type(value, struct ipv4_revnat_entry);
	__uint(max_entries, LB_REVERSE_SK_MAP_SIZE);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilium_lb4_reverse_sk __section(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct ipv6_revnat_tuple);
	__type(value, struct ipv6_revnat_entry);
	__uint(max_entries, LB_REVERSE_SK_MAP_SIZE);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilium_lb6_reverse_sk __section(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilium_lb_sock_hostns __section(".maps");

#endif /* __LIB_SOCK_H_ */
