/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The load balancer of the container datapath (Cilium's lb4_local/lb6_local
 * and reverse NAT in bpf_lxc), over the service maps of lib/lb.h.
 *
 * from-container, a TCP/UDP packet to a service frontend (VIP:port):
 *   - the flow's CT_SERVICE entry (keyed by the tuple as the client sent it)
 *     names the backend it was given; a flow without one (or whose backend
 *     is gone from cilium_lb{4,6}_backends) gets a random slot's backend, or
 *     is dropped with DROP_NO_SERVICE when the service has none;
 *   - destination address and port are rewritten to the backend's (L3 and
 *     L4 checksums with them), and the rest of the program (conntrack,
 *     policy, delivery) sees the backend: policy applies to the backend's
 *     identity and the connection's CT entry carries the service ID as its
 *     rev_nat_index;
 *   - a client whose backend is itself (hairpin) also gets its source
 *     rewritten to a loopback address (IPv4: Cilium's IPV4_LOOPBACK
 *     169.254.42.1): the kernel drops a packet arriving with its own
 *     address as source, and the reply must leave the container to be
 *     translated back (CT_F_LOOPBACK).
 *   The CT_SERVICE entry is written once the flow passed policy, so a
 *   denied client takes no room in the CT table for it.
 * Replies (CT_REPLY of an entry with a rev_nat_index), in from-container
 * (the backend is a local endpoint) or to-container (it is elsewhere), get
 * the frontend back as their source from cilium_lb{4,6}_reverse_nat (and a
 * hairpin reply its client's address as destination); ICMP errors about
 * such a flow (CT_RELATED) get it back in the packet they quote.
 * A backend removed from a service keeps its connections while its entry
 * stays in the backends map: the agent deletes it once no CT_SERVICE entry
 * names it (docker_cilium/service/manager.py). Later fragments are
 * translated at L3 only (they carry no L4 header).
 */
#ifndef __LIB_LB_LXC_H_
#define __LIB_LB_LXC_H_

#include "common.h"
#include "maps.h"
#include "lb.h"
#include "conntrack.h"

/* The source of a hairpin flow: Cilium's IPV4_LOOPBACK, and for IPv6 an
 * address of the discard-only prefix 100::/64 (RFC 6666), which no host
 * routes anywhere should a packet escape the datapath untranslated */
#define IPV4_LOOPBACK		bpf_htonl(0xa9fe2a01)	/* 169.254.42.1 */
#define IPV6_LOOPBACK_HI	bpf_htonl(0x01000000)	/* 100::a9fe:2a01 */
#define IPV6_LOOPBACK_LO	bpf_htonl(0xa9fe2a01)

static __always_inline void lb_loopback(const struct flow *f, union v6addr *lo)
{
	lo->d[0] = 0;
	lo->d[1] = 0;
	if (f->family == 4) {
		lo->p32[0] = IPV4_LOOPBACK;
	} else {
		lo->p32[0] = IPV6_LOOPBACK_HI;
		lo->p32[3] = IPV6_LOOPBACK_LO;
	}
}

/* The entry points below are global functions (verified once each, not
 * inlined into both programs' every path: the verifier's state count
 * exceeded its limit with them inlined); their pointer arguments are
 * checked for NULL as it requires. */
#define LB_FUNC __attribute__((noinline))

/* A service flow being translated in from-container (scalars only: a
 * global function's argument). */
struct lb_flow {
	union v6addr vip;		/* the frontend the client sent to */
	__be16 vport;
	__u8 has_entry;			/* it had a CT_SERVICE entry naming a live backend */
	__u8 pad;
	__u32 backend_id;
	struct ct_nat nat;		/* rev_nat_index 0: not a service flow */
};

static __always_inline __u32 l4_csum_off(const struct flow *f)
{
	return f->l4_off + (f->nexthdr == IPPROTO_TCP ? offsetof(struct tcphdr, check) :
			    offsetof(struct udphdr, check));
}

static __always_inline __u64 l4_csum_flags(const struct flow *f)
{
	/* an IPv4 UDP checksum of 0 means "none": keep it so */
	return f->family == 4 && f->nexthdr == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;
}

/* Rewrite the source ('dst' 0) or destination address and port of f's
 * packet and of f, fixing the IPv4 header checksum and the L4 checksum
 * (pseudo header included). Returns 0 or -1. */
static __always_inline int lb_rewrite(struct __sk_buff *skb, struct flow *f, int dst,
				      const union v6addr *addr, __be16 port)
{
	union v6addr *cur = dst ? &f->daddr : &f->saddr;
	__be16 *cur_port = dst ? &f->dport : &f->sport;
	__u32 port_off = f->l4_off + (dst ? 2 : 0);
	__u64 csum_flags = l4_csum_flags(f);

	if (f->family == 4) {
		__be32 old = cur->p32[0], new = addr->p32[0];
		__u32 off = ETH_HLEN + (dst ? offsetof(struct iphdr, daddr) :
					offsetof(struct iphdr, saddr));

		if (old != new) {
			if (!f->frag_later &&
			    bpf_l4_csum_replace(skb, l4_csum_off(f), old, new,
						BPF_F_PSEUDO_HDR | csum_flags | 4) < 0)
				return -1;
			if (bpf_l3_csum_replace(skb, ETH_HLEN + offsetof(struct iphdr, check),
						old, new, 4) < 0)
				return -1;
			if (bpf_skb_store_bytes(skb, off, &new, 4, 0) < 0)
				return -1;
			cur->p32[0] = new;
		}
	} else {
		__u32 off = ETH_HLEN + (dst ? offsetof(struct ipv6hdr, daddr) :
					offsetof(struct ipv6hdr, saddr));
		union v6addr old = *cur, new = *addr;
		__s64 sum;

		if (!ipv6_addr_equals(&old, new.addr)) {
			sum = bpf_csum_diff(old.p32, 16, new.p32, 16, 0);
			if (!f->frag_later &&
			    bpf_l4_csum_replace(skb, l4_csum_off(f), 0, sum, BPF_F_PSEUDO_HDR) < 0)
				return -1;
			if (bpf_skb_store_bytes(skb, off, new.addr, 16, 0) < 0)
				return -1;
			*cur = new;
		}
	}
	if (*cur_port != port && !f->frag_later) {
		if (bpf_l4_csum_replace(skb, l4_csum_off(f), *cur_port, port, csum_flags | 2) < 0)
			return -1;
		if (bpf_skb_store_bytes(skb, port_off, &port, 2, 0) < 0)
			return -1;
	}
	*cur_port = port;
	return 0;
}

/* The backend of backend_id as an address and port; 0 if it is gone. */
static __always_inline int lb_backend(const struct flow *f, __u32 backend_id, union v6addr *addr,
				      __be16 *port)
{
	if (f->family == 4) {
		struct lb4_backend *b = bpf_map_lookup_elem(&cilium_lb4_backends, &backend_id);

		if (!b)
			return 0;
		addr->p32[0] = b->address;
		*port = b->port;
	} else {
		struct lb6_backend *b = bpf_map_lookup_elem(&cilium_lb6_backends, &backend_id);

		if (!b)
			return 0;
		__builtin_memcpy(addr->addr, b->address.addr, 16);
		*port = b->port;
	}
	return 1;
}

/* from-container: translate a packet to a service frontend (see the top of
 * this file). lb->nat.rev_nat_index stays 0 for a packet to no service.
 * Returns 0 or a drop reason. */
LB_FUNC int lb_lxc_translate(struct __sk_buff *skb, struct flow *f, __u32 now, struct lb_flow *lb)
{
	struct ct_entry *se;
	struct lb_service *svc;
	union v6addr backend = {};
	__be16 port = 0;

	if (!f || !lb)
		return 0;
	if ((f->nexthdr != IPPROTO_TCP && f->nexthdr != IPPROTO_UDP) || f->is_error)
		return 0;
	if (f->family == 4)
		svc = lb4_lookup_service(f->daddr.p32[0], f->dport, f->nexthdr);
	else
		svc = lb6_lookup_service(&f->daddr, f->dport, f->nexthdr);
	if (!svc)
		return 0;

	se = ct_lookup_live(f, 0, CT_SERVICE, now);
	if (se) {
		lb->backend_id = se->src_sec_id;
		lb->has_entry = lb_backend(f, lb->backend_id, &backend, &port);
	}
	if (!lb->has_entry) {	/* a new flow, or its backend is gone: pick one */
		if (f->family == 4) {
			struct lb4_backend *b = lb4_select_backend(f->daddr.p32[0], f->dport,
								   f->nexthdr, svc, &lb->backend_id);
			if (!b)
				return DROP_NO_SERVICE;
			backend.p32[0] = b->address;
			port = b->port;
		} else {
			struct lb6_backend *b = lb6_select_backend(&f->daddr, f->dport, f->nexthdr,
								   svc, &lb->backend_id);
			if (!b)
				return DROP_NO_SERVICE;
			__builtin_memcpy(backend.addr, b->address.addr, 16);
			port = b->port;
		}
	}
	lb->vip = f->daddr;
	lb->vport = f->dport;
	lb->nat.rev_nat_index = svc->rev_nat_index;
	if (lb_rewrite(skb, f, 1, &backend, port) < 0)
		return DROP_INVALID;
	if (ipv6_addr_equals(&f->saddr, f->daddr.addr)) {	/* IPv4: p32[0], rest 0 */
		union v6addr lo;

		lb_loopback(f, &lo);
		lb->nat.flags = CT_F_LOOPBACK;
		if (lb_rewrite(skb, f, 0, &lo, f->sport) < 0)
			return DROP_INVALID;
	}
	return 0;
}

/* from-container, after policy let the translated flow through: record (or
 * keep alive) its CT_SERVICE entry, keyed by the tuple the client sent. Its
 * lifetime follows the connection: short until the client acknowledged
 * anything, closing once it sent FIN or RST. Returns 0 or the map error. */
LB_FUNC int lb_lxc_track(const struct flow *f, const struct lb_flow *lb, __u32 now)
{
	struct ct_entry *e = NULL, new = {};
	__u32 lifetime = CT_LIFETIME_NONTCP;
	union v6addr client;

	if (!f || !lb)
		return 0;
	/* the client's own address: the backend's, when a hairpin rewrote it */
	client = lb->nat.flags & CT_F_LOOPBACK ? f->daddr : f->saddr;

	if (f->nexthdr == IPPROTO_TCP) {
		if (f->tcp_flags & (TCP_FLAG_FIN | TCP_FLAG_RST))
			lifetime = CT_CLOSE_TIMEOUT;
		else if (f->tcp_flags & TCP_FLAG_ACK)
			lifetime = CT_LIFETIME_TCP;
		else
			lifetime = CT_SYN_TIMEOUT;
	}
	new.src_sec_id = lb->backend_id;
	new.rev_nat_index = lb->nat.rev_nat_index;
	new.lifetime = now + lifetime;
	new.last_report = now;
	if (f->family == 4) {
		struct ipv4_ct_tuple k = {};

		k.saddr = client.p32[0];
		k.daddr = lb->vip.p32[0];
		k.sport = f->sport;
		k.dport = lb->vport;
		k.nexthdr = f->nexthdr;
		k.flags = CT_SERVICE;
		if (lb->has_entry)
			e = bpf_map_lookup_elem(&cilium_ct4, &k);
		if (!e)
			return bpf_map_update_elem(&cilium_ct4, &k, &new, BPF_ANY);
	} else {
		struct ipv6_ct_tuple k = {};

		__builtin_memcpy(k.saddr, client.addr, 16);
		__builtin_memcpy(k.daddr, lb->vip.addr, 16);
		k.sport = f->sport;
		k.dport = lb->vport;
		k.nexthdr = f->nexthdr;
		k.flags = CT_SERVICE;
		if (lb->has_entry)
			e = bpf_map_lookup_elem(&cilium_ct6, &k);
		if (!e)
			return bpf_map_update_elem(&cilium_ct6, &k, &new, BPF_ANY);
	}
	if (lifetime == CT_CLOSE_TIMEOUT) {
		e->flags |= CT_F_RX_CLOSING | CT_F_TX_CLOSING;
	} else if (ct_is_closed(e)) {
		if ((f->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN)
			e->flags &= ~(CT_F_RX_CLOSING | CT_F_TX_CLOSING);	/* re-opened */
		else
			lifetime = CT_CLOSE_TIMEOUT;	/* the last ACKs of a close */
	}
	if (e->lifetime != now + lifetime)
		e->lifetime = now + lifetime;
	return 0;
}

/* A reply of a translated flow: the frontend becomes its source again (and
 * a hairpin reply's destination its client, which is the backend itself).
 * Nothing to do once the service is gone. Returns 0 or -1. */
/* The frontend of service rev_nat_index; 0 once the service is gone. */
static __always_inline int lb_frontend(const struct flow *f, __u16 rev_nat_index, union v6addr *fe,
				       __be16 *port)
{
	if (f->family == 4) {
		struct lb4_reverse_nat *rn = bpf_map_lookup_elem(&cilium_lb4_reverse_nat, &rev_nat_index);

		if (!rn)
			return 0;
		fe->p32[0] = rn->address;
		*port = rn->port;
	} else {
		struct lb6_reverse_nat *rn = bpf_map_lookup_elem(&cilium_lb6_reverse_nat, &rev_nat_index);

		if (!rn)
			return 0;
		__builtin_memcpy(fe->addr, rn->address.addr, 16);
		*port = rn->port;
	}
	return 1;
}

LB_FUNC int lb_rev_nat(struct __sk_buff *skb, struct flow *f, const struct ct_nat *nat)
{
	union v6addr fe = {}, client;
	__be16 port = 0;

	if (!f || !nat)
		return 0;
	client = f->saddr;
	if (!lb_frontend(f, nat->rev_nat_index, &fe, &port))
		return 0;
	if (lb_rewrite(skb, f, 0, &fe, port) < 0)
		return -1;
	if (nat->flags & CT_F_LOOPBACK) {
		union v6addr lo;

		lb_loopback(f, &lo);
		if (ipv6_addr_equals(&f->daddr, lo.addr))
			return lb_rewrite(skb, f, 1, &client, f->dport);
	}
	return 0;
}

/* An ICMP error about a translated flow, on its way to the client: the
 * packet it quotes (client -> backend) gets the frontend back as its
 * destination, so the client's socket (connected to the VIP) sees the
 * error, and the error's own source becomes the frontend when the backend
 * sent it (a router on the way keeps its address). IPv4: the quoted
 * header's checksum moves with its address, so the ICMP checksum only
 * changes with the port; ICMPv6's covers the quoted address too and the
 * outer addresses through the pseudo header. The quoted L4 checksum is
 * left alone (nobody verifies a quoted, possibly truncated, segment).
 * Errors of hairpin flows, and IPv6 errors quoting extension headers, are
 * left as they are. Returns 0 or -1. */
LB_FUNC int lb_rev_nat_icmp(struct __sk_buff *skb, struct flow *f, const struct ct_nat *nat)
{
	union v6addr fe = {}, backend = {};
	__u32 in_off, l4_off, csum_off;
	__be16 port = 0, bport;
	__u8 proto;

	if (!f || !nat || (nat->flags & CT_F_LOOPBACK))
		return 0;
	if (!lb_frontend(f, nat->rev_nat_index, &fe, &port))
		return 0;
	in_off = f->l4_off + 8;
	csum_off = f->l4_off + 2;	/* icmphdr / icmp6hdr checksum */
	/* the quoted header (IPv6: without extension headers), read field by
	 * field: the caller's stack leaves little room for a struct flow */
	if (f->family == 4) {
		__u8 vihl;

		if (bpf_skb_load_bytes(skb, in_off, &vihl, 1) < 0 ||
		    bpf_skb_load_bytes(skb, in_off + offsetof(struct iphdr, protocol), &proto, 1) < 0 ||
		    bpf_skb_load_bytes(skb, in_off + offsetof(struct iphdr, daddr), backend.p32, 4) < 0)
			return 0;
		l4_off = in_off + (vihl & 0x0f) * 4;
	} else {
		if (bpf_skb_load_bytes(skb, in_off + offsetof(struct ipv6hdr, nexthdr), &proto, 1) < 0 ||
		    bpf_skb_load_bytes(skb, in_off + offsetof(struct ipv6hdr, daddr), backend.addr, 16) < 0)
			return 0;
		l4_off = in_off + sizeof(struct ipv6hdr);
	}
	if ((proto != IPPROTO_TCP && proto != IPPROTO_UDP) ||
	    bpf_skb_load_bytes(skb, l4_off + 2, &bport, 2) < 0)
		return 0;

	if (f->family == 4) {
		__be32 old = backend.p32[0], new = fe.p32[0];

		if (f->saddr.p32[0] == old) {
			if (bpf_l3_csum_replace(skb, ETH_HLEN + offsetof(struct iphdr, check),
						old, new, 4) < 0 ||
			    bpf_skb_store_bytes(skb, ETH_HLEN + offsetof(struct iphdr, saddr),
						&new, 4, 0) < 0)
				return -1;
			f->saddr.p32[0] = new;
		}
		if (bpf_l3_csum_replace(skb, in_off + offsetof(struct iphdr, check), old, new, 4) < 0 ||
		    bpf_skb_store_bytes(skb, in_off + offsetof(struct iphdr, daddr), &new, 4, 0) < 0)
			return -1;
	} else {
		__s64 sum = bpf_csum_diff(backend.p32, 16, fe.p32, 16, 0);

		if (ipv6_addr_equals(&f->saddr, backend.addr)) {
			if (bpf_l4_csum_replace(skb, csum_off, 0, sum, BPF_F_PSEUDO_HDR) < 0 ||
			    bpf_skb_store_bytes(skb, ETH_HLEN + offsetof(struct ipv6hdr, saddr),
						fe.addr, 16, 0) < 0)
				return -1;
			f->saddr = fe;
		}
		if (bpf_l4_csum_replace(skb, csum_off, 0, sum, 0) < 0 ||
		    bpf_skb_store_bytes(skb, in_off + offsetof(struct ipv6hdr, daddr), fe.addr, 16, 0) < 0)
			return -1;
	}
	if (bport != port &&
	    (bpf_l4_csum_replace(skb, csum_off, bport, port, 2) < 0 ||
	     bpf_skb_store_bytes(skb, l4_off + 2, &port, 2, 0) < 0))
		return -1;
	return 0;
}

#endif /* __LIB_LB_LXC_H_ */
