// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* docker-cilium socket load balancer: host processes reach service VIPs.
 *
 * Attached once to the root of the cgroup v2 hierarchy (every process of the
 * host sits in it), these hooks translate at the socket instead of per packet,
 * as Cilium's bpf_sock.c does:
 *
 *   connect4/6:      connect() to VIP:port goes to a backend (TCP and
 *                    connected UDP); no backend -> EHOSTUNREACH
 *   sendmsg4/6:      sendto() to VIP:port on an unconnected UDP socket
 *   recvmsg4/6:      recvfrom() of a backend's reply shows VIP:port
 *   getpeername4/6:  getpeername() of a translated socket shows VIP:port
 *
 * Only sockets of the host network namespace (cilium_lb_sock_hostns) are
 * translated: containers are balanced by bpf_lxc.c, so no flow is translated
 * twice. An IPv4-mapped IPv6 destination (::ffff:a.b.c.d) on an IPv6 socket
 * is looked up as the IPv4 service. TCP picks a backend at random per
 * connection; UDP by the socket cookie, so one socket keeps its backend while
 * the service's backends stay the same.
 */
#include <linux/errno.h>

#include "lib/common.h"
#include "lib/lb.h"
#include "lib/sock.h"

#define SYS_REJECT	0
#define SYS_PROCEED	1

static __always_inline int in_hostns(struct bpf_sock_addr *ctx)
{
	__u32 zero = 0;
	__u64 *host = bpf_map_lookup_elem(&cilium_lb_sock_hostns, &zero);

	return host && *host && bpf_get_netns_cookie(ctx) == *host;
}

static __always_inline __u8 sock_proto(const struct bpf_sock_addr *ctx)
{
	__u32 proto = ctx->protocol;

	return proto == IPPROTO_TCP || proto == IPPROTO_UDP ? proto : 0;
}

static __always_inline __be16 ctx_port(const struct bpf_sock_addr *ctx)
{
	volatile __u32 port = ctx->user_port;

	return (__be16)port;
}

static __always_inline __u16 sock_select_slot(struct bpf_sock_addr *ctx, __u8 proto, __u16 count)
{
	__u32 r = proto == IPPROTO_TCP ? bpf_get_prandom_u32() : (__u32)bpf_get_socket_cookie(ctx);

	return (r % count) + 1;
}

/* 0 with (*addr, *port) set to a backend of the IPv4 service found there
 * (unchanged when it is no service), or -errno for the syscall. */
static __always_inline int sock4_xlate_fwd(struct bpf_sock_addr *ctx, __u8 proto, __be32 *addr,
					   __be16 *port)
{
	struct ipv4_revnat_tuple rkey = {};
	struct ipv4_revnat_entry rval = {};
	struct lb4_key key = {};
	struct lb4_backend *be;
	struct lb_service *svc, *slot;

	key.address = *addr;
	key.dport = *port;
	key.proto = proto;
	svc = bpf_map_lookup_elem(&cilium_lb4_services_v2, &key);
	if (!svc)
		return 0;
	if (!svc->count)
		return -EHOSTUNREACH;
	key.backend_slot = sock_select_slot(ctx, proto, svc->count);
	slot = bpf_map_lookup_elem(&cilium_lb4_services_v2, &key);
	if (!slot)
		return -EHOSTUNREACH;
	be = bpf_map_lookup_elem(&cilium_lb4_backends, &slot->backend_id);
	if (!be)
		return -EHOSTUNREACH;
	rkey.cookie = bpf_get_socket_cookie(ctx);
	rkey.address = be->address;
	rkey.port = be->port;
	rval.address = *addr;
	rval.port = *port;
	rval.rev_nat_index = svc->rev_nat_index;
	if (bpf_map_update_elem(&cilium_lb4_reverse_sk, &rkey, &rval, BPF_ANY) < 0)
		return -ENOMEM;
	*addr = be->address;
	*port = be->port;
	return 0;
}

/* (*addr, *port), a backend's, set to the frontend this socket was translated
 * from; unchanged when there is none or its service no longer has that frontend. */
static __always_inline void sock4_xlate_rev(struct bpf_sock_addr *ctx, __be32 *addr, __be16 *port)
{
	struct ipv4_revnat_tuple rkey = {};
	struct ipv4_revnat_entry *rval;
	struct lb4_reverse_nat *rn;

	rkey.cookie = bpf_get_socket_cookie(ctx);
	rkey.address = *addr;
	rkey.port = *port;
	rval = bpf_map_lookup_elem(&cilium_lb4_reverse_sk, &rkey);
	if (!rval)
		return;
	rn = bpf_map_lookup_elem(&cilium_lb4_reverse_nat, &rval->rev_nat_index);
	if (!rn || rn->address != rval->address || rn->port != rval->port) {
		bpf_map_delete_elem(&cilium_lb4_reverse_sk, &rkey);
		return;
	}
	*addr = rval->address;
	*port = rval->port;
}

static __always_inline int sock4_fwd(struct bpf_sock_addr *ctx)
{
	__u8 proto = sock_proto(ctx);
	__be32 addr = ctx->user_ip4;
	__be16 port = ctx_port(ctx);
	int err;

	if (!proto || !in_hostns(ctx))
		return SYS_PROCEED;
	err = sock4_xlate_fwd(ctx, proto, &addr, &port);
	if (err) {
		bpf_set_retval(err);
		return SYS_REJECT;
	}
	ctx->user_ip4 = addr;
	ctx->user_port = (__u32)port;
	return SYS_PROCEED;
}

static __always_inline int sock4_rev(struct bpf_sock_addr *ctx)
{
	__be32 addr = ctx->user_ip4;
	__be16 port = ctx_port(ctx);

	if (!in_hostns(ctx))
		return SYS_PROCEED;
	sock4_xlate_rev(ctx, &addr, &port);
	ctx->user_ip4 = addr;
	ctx->user_port = (__u32)port;
	return SYS_PROCEED;
}

__section("cgroup/connect4")
int cil_sock4_connect(struct bpf_sock_addr *ctx)
{
	return sock4_fwd(ctx);
}

__section("cgroup/sendmsg4")
int cil_sock4_sendmsg(struct bpf_sock_addr *ctx)
{
	return sock4_fwd(ctx);
}

__section("cgroup/recvmsg4")
int cil_sock4_recvmsg(struct bpf_sock_addr *ctx)
{
	return sock4_rev(ctx);
}

__section("cgroup/getpeername4")
int cil_sock4_getpeername(struct bpf_sock_addr *ctx)
{
	return sock4_rev(ctx);
}

/* ---- IPv6 ---- */

static __always_inline void ctx_get_v6(const struct bpf_sock_addr *ctx, union v6addr *a)
{
	a->p32[0] = ctx->user_ip6[0];
	a->p32[1] = ctx->user_ip6[1];
	a->p32[2] = ctx->user_ip6[2];
	a->p32[3] = ctx->user_ip6[3];
}

static __always_inline void ctx_set_v6(struct bpf_sock_addr *ctx, const union v6addr *a)
{
	ctx->user_ip6[0] = a->p32[0];
	ctx->user_ip6[1] = a->p32[1];
	ctx->user_ip6[2] = a->p32[2];
	ctx->user_ip6[3] = a->p32[3];
}

static __always_inline int v6_is_v4_mapped(const union v6addr *a)
{
	return a->p32[0] == 0 && a->p32[1] == 0 && a->p32[2] == bpf_htonl(0xffff);
}

static __always_inline int sock6_xlate_fwd(struct bpf_sock_addr *ctx, __u8 proto, union v6addr *addr,
					   __be16 *port)
{
	struct ipv6_revnat_tuple rkey = {};
	struct ipv6_revnat_entry rval = {};
	struct lb6_key key = {};
	struct lb6_backend *be;
	struct lb_service *svc, *slot;

	key.address = *addr;
	key.dport = *port;
	key.proto = proto;
	svc = bpf_map_lookup_elem(&cilium_lb6_services_v2, &key);
	if (!svc)
		return 0;
	if (!svc->count)
		return -EHOSTUNREACH;
	key.backend_slot = sock_select_slot(ctx, proto, svc->count);
	slot = bpf_map_lookup_elem(&cilium_lb6_services_v2, &key);
	if (!slot)
		return -EHOSTUNREACH;
	be = bpf_map_lookup_elem(&cilium_lb6_backends, &slot->backend_id);
	if (!be)
		return -EHOSTUNREACH;
	rkey.cookie = bpf_get_socket_cookie(ctx);
	rkey.address = be->address;
	rkey.port = be->port;
	rval.address = *addr;
	rval.port = *port;
	rval.rev_nat_index = svc->rev_nat_index;
	if (bpf_map_update_elem(&cilium_lb6_reverse_sk, &rkey, &rval, BPF_ANY) < 0)
		return -ENOMEM;
	*addr = be->address;
	*port = be->port;
	return 0;
}

static __always_inline void sock6_xlate_rev(struct bpf_sock_addr *ctx, union v6addr *addr, __be16 *port)
{
	struct ipv6_revnat_tuple rkey = {};
	struct ipv6_revnat_entry *rval;
	struct lb6_reverse_nat *rn;

	rkey.cookie = bpf_get_socket_cookie(ctx);
	rkey.address = *addr;
	rkey.port = *port;
	rval = bpf_map_lookup_elem(&cilium_lb6_reverse_sk, &rkey);
	if (!rval)
		return;
	rn = bpf_map_lookup_elem(&cilium_lb6_reverse_nat, &rval->rev_nat_index);
	if (!rn || rn->port != rval->port || rn->address.d[0] != rval->address.d[0] ||
	    rn->address.d[1] != rval->address.d[1]) {
		bpf_map_delete_elem(&cilium_lb6_reverse_sk, &rkey);
		return;
	}
	*addr = rval->address;
	*port = rval->port;
}

static __always_inline int sock6_fwd(struct bpf_sock_addr *ctx)
{
	__u8 proto = sock_proto(ctx);
	__be16 port = ctx_port(ctx);
	union v6addr addr;
	__be32 addr4;
	int err;

	if (!proto || !in_hostns(ctx))
		return SYS_PROCEED;
	ctx_get_v6(ctx, &addr);
	if (v6_is_v4_mapped(&addr)) {
		addr4 = addr.p32[3];
		err = sock4_xlate_fwd(ctx, proto, &addr4, &port);
		addr.p32[3] = addr4;
	} else {
		err = sock6_xlate_fwd(ctx, proto, &addr, &port);
	}
	if (err) {
		bpf_set_retval(err);
		return SYS_REJECT;
	}
	ctx_set_v6(ctx, &addr);
	ctx->user_port = (__u32)port;
	return SYS_PROCEED;
}

static __always_inline int sock6_rev(struct bpf_sock_addr *ctx)
{
	__be16 port = ctx_port(ctx);
	union v6addr addr;
	__be32 addr4;

	if (!in_hostns(ctx))
		return SYS_PROCEED;
	ctx_get_v6(ctx, &addr);
	if (v6_is_v4_mapped(&addr)) {
		addr4 = addr.p32[3];
		sock4_xlate_rev(ctx, &addr4, &port);
		addr.p32[3] = addr4;
	} else {
		sock6_xlate_rev(ctx, &addr, &port);
	}
	ctx_set_v6(ctx, &addr);
	ctx->user_port = (__u32)port;
	return SYS_PROCEED;
}

__section("cgroup/connect6")
int cil_sock6_connect(struct bpf_sock_addr *ctx)
{
	return sock6_fwd(ctx);
}

__section("cgroup/sendmsg6")
int cil_sock6_sendmsg(struct bpf_sock_addr *ctx)
{
	return sock6_fwd(ctx);
}

__section("cgroup/recvmsg6")
int cil_sock6_recvmsg(struct bpf_sock_addr *ctx)
{
	return sock6_rev(ctx);
}

__section("cgroup/getpeername6")
int cil_sock6_getpeername(struct bpf_sock_addr *ctx)
{
	return sock6_rev(ctx);
}

char __license[] __section("license") = "Dual BSD/GPL";
