/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Load balancer maps (services), in the shape of Cilium's v2 service maps.
 *
 * A service is a frontend (VIP, port, protocol) with `count` backends. Its
 * entries in cilium_lb{4,6}_services_v2 share the frontend and differ by
 * backend_slot: slot 0 is the service itself (count, rev_nat_index = the
 * service ID), slots 1..count each name one backend by its ID in
 * cilium_lb{4,6}_backends. cilium_lb{4,6}_reverse_nat maps the service ID
 * back to the frontend, so replies (and getpeername) can be given the VIP.
 * The agent writes backends, then slots, then slot 0, so a reader that
 * found slot 0 finds every slot it counts.
 *
 * Read by bpf_lxc.c (containers) and bpf_sock.c (host sockets); mirrored by
 * docker_cilium/datapath/maps/lbmap.py.
 */
#ifndef __LIB_LB_H_
#define __LIB_LB_H_

#include "common.h"

#ifndef LB_SERVICE_MAP_SIZE
#define LB_SERVICE_MAP_SIZE	65536
#endif
#ifndef LB_BACKENDS_MAP_SIZE
#define LB_BACKENDS_MAP_SIZE	65536
#endif
#ifndef LB_REVNAT_MAP_SIZE
#define LB_REVNAT_MAP_SIZE	65536
#endif

struct lb4_key {
	__be32 address;		/* frontend (VIP) */
	__be16 dport;		/* frontend port */
	__u16 backend_slot;	/* 0: the service; 1..count: a backend */
	__u8 proto;		/* IPPROTO_TCP / IPPROTO_UDP */
	__u8 pad[3];
};

struct lb6_key {
	union v6addr address;
	__be16 dport;
	__u16 backend_slot;
	__u8 proto;
	__u8 pad[3];
};

/* value of both service maps */
struct lb_service {
	__u32 backend_id;	/* slot > 0: the backend's ID; slot 0: 0 */
	__u16 count;		/* slot 0: number of backends (0: none, drop 158) */
	__u16 rev_nat_index;	/* the service ID */
	__u8 flags;
	__u8 pad[3];
};

struct lb4_backend {
	__be32 address;
	__be16 port;
	__u8 proto;
	__u8 flags;
};

struct lb6_backend {
	union v6addr address;
	__be16 port;
	__u8 proto;
	__u8 flags;
	__u8 pad[4];		/* union v6addr aligns to 8 */
};

struct lb4_reverse_nat {
	__be32 address;
	__be16 port;
	__u16 pad;
};

struct lb6_reverse_nat {
	union v6addr address;
	__be16 port;
	__u8 pad[6];		/* union v6addr aligns to 8 */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct lb4_key);
	__type(value, struct lb_service);
	__uint(max_entries, LB_SERVICE_MAP_SIZE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilium_lb4_services_v2 __section(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct lb4_backend);
	__uint(max_entries, LB_BACKENDS_MAP_SIZE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilium_lb4_backends __section(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u16);
	__type(value, struct lb4_reverse_nat);
	__uint(max_entries, LB_REVNAT_MAP_SIZE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilium_lb4_reverse_nat __section(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct lb6_key);
	__type(value, struct lb_service);
	__uint(max_entries, LB_SERVICE_MAP_SIZE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilium_lb6_services_v2 __section(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct lb6_backend);
	__uint(max_entries, LB_BACKENDS_MAP_SIZE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilium_lb6_backends __section(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u16);
	__type(value, struct lb6_reverse_nat);
	__uint(max_entries, LB_REVNAT_MAP_SIZE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilium_lb6_reverse_nat __section(".maps");

/* slot 0 of the frontend, or NULL when it is no service */
static __always_inline struct lb_service *lb4_lookup_service(__be32 addr, __be16 dport, __u8 proto)
{
	struct lb4_key key = {};

	key.address = addr;
	key.dport = dport;
	key.proto = proto;
	return bpf_map_lookup_elem(&cilium_lb4_services_v2, &key);
}

static __always_inline struct lb_service *lb6_lookup_service(const union v6addr *addr, __be16 dport,
							     __u8 proto)
{
	struct lb6_key key = {};

	__builtin_memcpy(key.address.addr, addr->addr, 16);
	key.dport = dport;
	key.proto = proto;
	return bpf_map_lookup_elem(&cilium_lb6_services_v2, &key);
}

/* The backend of a random slot of a service with count > 0, or NULL. */
static __always_inline struct lb4_backend *lb4_select_backend(__be32 addr, __be16 dport, __u8 proto,
							      const struct lb_service *svc,
							      __u32 *backend_id)
{
	struct lb4_key key = {};
	struct lb_service *slot;

	if (!svc->count)
		return NULL;
	key.address = addr;
	key.dport = dport;
	key.proto = proto;
	key.backend_slot = (bpf_get_prandom_u32() % svc->count) + 1;
	slot = bpf_map_lookup_elem(&cilium_lb4_services_v2, &key);
	if (!slot)
		return NULL;
	*backend_id = slot->backend_id;
	return bpf_map_lookup_elem(&cilium_lb4_backends, &slot->backend_id);
}

static __always_inline struct lb6_backend *lb6_select_backend(const union v6addr *addr, __be16 dport,
							      __u8 proto, const struct lb_service *svc,
							      __u32 *backend_id)
{
	struct lb6_key key = {};
	struct lb_service *slot;

	if (!svc->count)
		return NULL;
	__builtin_memcpy(key.address.addr, addr->addr, 16);
	key.dport = dport;
	key.proto = proto;
	key.backend_slot = (bpf_get_prandom_u32() % svc->count) + 1;
	slot = bpf_map_lookup_elem(&cilium_lb6_services_v2, &key);
	if (!slot)
		return NULL;
	*backend_id = slot->backend_id;
	return bpf_map_lookup_elem(&cilium_lb6_backends, &slot->backend_id);
}

#endif /* __LIB_LB_H_ */
