/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Steering connections to the L7 proxy (TPROXY-style, with bpf_sk_assign).
 *
 * The proxy listens on a transparent socket per redirect (0.0.0.0:P and
 * [::]:P). A packet of a redirected flow is attached to the proxy's socket
 * with bpf_sk_assign() at tc ingress and marked MARK_MAGIC_TO_PROXY | P << 16,
 * which the policy routing rule (datapath/proxyroute.py: fwmark 0x200/0xf00
 * lookup table 2004, "local default dev lo") delivers locally: the packet
 * keeps its addresses, so the accepted socket's local address is the
 * original destination and its peer the original source.
 *
 * bpf_sk_assign() only works at tc ingress: from-container (the client's
 * veth) assigns directly; to-container (tc egress of the server's veth)
 * hands the packet to cilium_host's ingress ("hairpin"), where from-host
 * assigns it.
 */
#ifndef __LIB_PROXY_H_
#define __LIB_PROXY_H_

#include "common.h"
#include "maps.h"

#ifndef PACKET_HOST
#define PACKET_HOST	0	/* <linux/if_packet.h> */
#endif

/* The socket tuple of f as bpf_sk*_lookup_tcp() wants it (packet order:
 * source = the remote end of the socket looked for). Returns its length. */
static __always_inline __u32 proxy_sock_tuple(const struct flow *f, struct bpf_sock_tuple *t)
{
	__builtin_memset(t, 0, sizeof(*t));
	if (f->family == 4) {
		t->ipv4.saddr = f->saddr.p32[0];
		t->ipv4.daddr = f->daddr.p32[0];
		t->ipv4.sport = f->sport;
		t->ipv4.dport = f->dport;
		return sizeof(t->ipv4);
	}
	__builtin_memcpy(t->ipv6.saddr, f->saddr.p32, 16);
	__builtin_memcpy(t->ipv6.daddr, f->daddr.p32, 16);
	t->ipv6.sport = f->sport;
	t->ipv6.dport = f->dport;
	return sizeof(t->ipv6);
}

/* Attach the TCP packet f to the proxy: to the socket of its own connection
 * when the proxy already has one (request or established socket, found by
 * the original tuple), else, if proxy_port (network order) is not 0, to the
 * listener on that port. 0 or DROP_PROXY_LOOKUP_FAILED / _SET_FAILED. */
static __always_inline int proxy_assign(struct __sk_buff *skb, const struct flow *f,
					__u16 proxy_port)
{
	struct bpf_sock_tuple t;
	struct bpf_sock *sk;
	__u32 len;
	int ret;

	len = proxy_sock_tuple(f, &t);
	sk = bpf_skc_lookup_tcp(skb, &t, len, BPF_F_CURRENT_NETNS, 0);
	if (sk) {
		/* the lookup falls back to listeners (any socket on the original
		 * port, e.g. the host's own server): only a connection counts */
		if (sk->state != BPF_TCP_LISTEN && sk->state != BPF_TCP_TIME_WAIT)
			goto assign;
		bpf_sk_release(sk);
	}
	if (!proxy_port)
		return DROP_PROXY_LOOKUP_FAILED;
	/* the transparent listener: bound to the wildcard address */
	__builtin_memset(&t, 0, sizeof(t));
	if (f->family == 4)
		t.ipv4.dport = proxy_port;
	else
		t.ipv6.dport = proxy_port;
	sk = bpf_skc_lookup_tcp(skb, &t, len, BPF_F_CURRENT_NETNS, 0);
	if (!sk)
		return DROP_PROXY_LOOKUP_FAILED;
	if (sk->state != BPF_TCP_LISTEN) {
		bpf_sk_release(sk);
		return DROP_PROXY_LOOKUP_FAILED;
	}
assign:
	ret = bpf_sk_assign(skb, sk, 0);
	bpf_sk_release(sk);
	return ret ? DROP_PROXY_SET_FAILED : 0;
}

/* The mark that routes a packet to the proxy (port: network order, 0 for
 * packets of a connection the proxy already has). */
static __always_inline __u32 proxy_mark(__u16 proxy_port)
{
	return MARK_MAGIC_TO_PROXY | ((__u32)bpf_ntohs(proxy_port) << 16);
}

/* The source identity a proxy's upstream connection carries in its mark
 * (MARK_MAGIC_PROXY_INGRESS / _EGRESS, docker_cilium/datapath/marks.py). */
static __always_inline __u32 proxy_mark_identity(__u32 mark)
{
	return ((mark >> 16) & 0xFFFF) | ((mark & 0xFF) << 24);
}

static __always_inline int proxy_mark_is_upstream(__u32 mark)
{
	__u32 magic = mark & MARK_MAGIC_HOST_MASK;

	return magic == MARK_MAGIC_PROXY_INGRESS || magic == MARK_MAGIC_PROXY_EGRESS;
}

/* The hairpin from to-container: hand the packet, marked for the proxy, to
 * cilium_host's ingress (from-host assigns the socket there). */
static __always_inline int proxy_hairpin(struct __sk_buff *skb, __u16 proxy_port)
{
	__u32 zero = 0;
	struct datapath_config *cfg = bpf_map_lookup_elem(&cilium_config, &zero);

	if (!cfg || !cfg->host_ifindex)
		return -1;
	skb->mark = proxy_mark(proxy_port);
	return bpf_redirect(cfg->host_ifindex, BPF_F_INGRESS);
}

#endif /* __LIB_PROXY_H_ */
