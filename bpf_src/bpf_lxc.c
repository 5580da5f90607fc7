// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* docker-cilium endpoint datapath.
 *
 * One object, compiled once per datapath configuration, loaded once; the same
 * two programs are attached to the host-side veth of EVERY endpoint. Each
 * program finds its endpoint by skb->ifindex in cilium_ep_ifindex, so adding
 * an endpoint or changing policy is a map update only.
 *
 *   from-container: tc ingress of the host veth (packets the container sends)
 *   to-container:   tc egress of the host veth (packets the kernel routes into
 *                   the container; endpoint-to-endpoint traffic bypasses it via
 *                   bpf_redirect_peer()).
 *   from-host:      tc ingress of cilium_host (connections to-container hands
 *                   to an ingress proxy, lib/proxy.h).
 *   to-overlay:     tc egress of cilium_host (the host's own traffic routed
 *                   there for another node's range: encapsulated, lib/encap.h).
 *   from-overlay:   tc ingress of cilium_vxlan (packets from other nodes).
 *
 * Tunnel mode (lib/encap.h): from-container encapsulates a packet for
 * another node's endpoint with the source identity as the VNI; from-overlay
 * on the receiving node puts that identity into skb->mark
 * (MARK_MAGIC_IDENTITY) and to-container enforces ingress policy with it.
 *
 * L7 redirects (lib/proxy.h): a new TCP flow whose deciding policy entry has
 * a proxy port goes to the proxy's socket: from-container assigns it for
 * the source's egress entry, else for a local destination's ingress entry;
 * to-container hairpins it through cilium_host for the endpoint's ingress
 * entry unless it comes from the ingress proxy itself. Its CT entry carries
 * CT_F_PROXY_REDIRECT, and the flow's later packets follow it.
 *
 * Services (lib/lb_lxc.h): from-container translates a packet to a service
 * frontend to its backend before conntrack and policy see it; replies are
 * translated back in whichever program sees them.
 */
#include "lib/common.h"
#include "lib/maps.h"
#include "lib/lb.h"
#include "lib/lb_lxc.h"
#include "lib/eth.h"
#include "lib/route.h"
#include "lib/l4.h"
#include "lib/ipv4.h"
#include "lib/ipv6.h"
#include "lib/drop.h"
#include "lib/conntrack.h"
#include "lib/policy.h"
#include "lib/trace.h"
#include "lib/proxy.h"
#include "lib/encap.h"

/* ARP from a container: well-formed Ethernet/IPv4 request or reply whose
 * sender is the endpoint itself (its MAC and its IPv4), or an ARP probe
 * (RFC 5227: a request with sender IP 0.0.0.0, which no receiver caches)
 * from the endpoint's MAC. 0 or a drop reason. */
static __always_inline int arp_check(struct __sk_buff *skb, const struct endpoint_info *ep)
{
	__u8 arp[28] __attribute__((aligned(4)));	/* header, sha, spa, tha, tpa */
	__u32 spa;

	if (bpf_skb_load_bytes(skb, ETH_HLEN, arp, sizeof(arp)) < 0)
		return DROP_INVALID;
	/* hardware Ethernet (1), protocol IPv4, lengths 6 and 4, op 1 or 2 */
	if (arp[0] != 0 || arp[1] != 1 || arp[2] != 0x08 || arp[3] != 0x00 ||
	    arp[4] != 6 || arp[5] != 4 || arp[6] != 0 || (arp[7] != 1 && arp[7] != 2))
		return DROP_INVALID;
	if (eth_addrcmp(&arp[8], ep->mac))
		return DROP_INVALID_SMAC;
	__builtin_memcpy(&spa, &arp[14], 4);
	if (!ep->ipv4 || (spa != ep->ipv4 && !(spa == 0 && arp[7] == 1)))
		return DROP_INVALID_SIP;
	return 0;
}

/* Neighbour discovery that passes without policy: towards the endpoint's
 * own link (link-local or link-scope multicast destinations, e.g. the
 * solicited-node groups) or towards the host (the router; never forwarded). */
static __always_inline int nd_is_link_local(const struct flow *f)
{
	if (ipv6_addr_is_linklocal(&f->daddr))
		return 1;
	if (ipv6_addr_is_multicast(&f->daddr) && (f->daddr.addr[1] & 0x0f) == 0x02)
		return 1;
	return ipcache_identity(f, &f->daddr) == IDENTITY_HOST;
}

static __always_inline int parse_ip(struct __sk_buff *skb, __u16 proto, struct flow *f)
{
#ifndef DISABLE_IPV4
	if (proto == bpf_htons(ETH_P_IP))
		return ipv4_parse_hdr(skb, ETH_HLEN, f, 0);
#endif
#ifndef DISABLE_IPV6
	if (proto == bpf_htons(ETH_P_IPV6))
		return ipv6_parse_hdr(skb, ETH_HLEN, f, 0);
#endif
	return 1;	/* not IP */
}

/* A first fragment is being forwarded: now (not while parsing, before
 * anti-spoofing and policy) its datagram's later fragments get its ports. */
static __always_inline void frag_record(const struct flow *f)
{
	if (!f->frag_first)
		return;
	if (f->family == 4)
		ipv4_frag_record(f);
	else
		ipv6_frag_record(f);
}

/* Deliver to a local endpoint: route (MACs, TTL) and hand the packet straight
 * to the peer device's ingress inside the container's netns. */
static __always_inline int redirect_to_endpoint(struct __sk_buff *skb, const struct flow *f,
						const struct endpoint_info *dst)
{
	__u8 smac[6], dmac[6];
	__u32 ifindex = dst->ifindex;
	int ret;

	__builtin_memcpy(smac, dst->node_mac, 6);
	__builtin_memcpy(dmac, dst->mac, 6);
	ret = l3_route(skb, f->family, smac, dmac);
	if (ret == -1)
		return TC_ACT_OK;	/* TTL expiring: let the stack answer */
	if (ret < 0)
		return TC_ACT_SHOT;
	return bpf_redirect_peer(ifindex, 0);
}

__section("tc/from-container")
int from_container(struct __sk_buff *skb)
{
	struct endpoint_info *ep, *dst_ep;
	struct ethhdr eth;
	struct flow f = {};
	struct lb_flow lb = {};
	struct ct_nat nat, ct_flags;
	__u32 now, len = skb->len, src_id, dst_id = 0, ct_src_id = 0, tun_ifindex;
	__u16 lxc_id, proxy_port = 0, in_port = 0;
	int to_proxy = 0;
	__u8 monitor = 0, match = POLICY_MATCH_NONE;
	int ret, ct;

	ep = lookup_ep_ifindex(skb->ifindex);
	if (!ep)
		return TC_ACT_OK;	/* not one of ours */
	lxc_id = ep->lxc_id;
	src_id = ep->sec_identity;

	/* The kernel moves an 802.1Q tag into skb metadata before tc runs (and
	 * would then deliver the inner frame, or untag a second tag, past
	 * these checks): a container's frame carries no VLAN tag. */
	if (skb->vlan_present)
		return send_drop_notify(skb, DROP_VLAN_FILTERED, METRIC_EGRESS, lxc_id, src_id, 0, 0);
	if (eth_load(skb, &eth) < 0)
		return send_drop_notify(skb, DROP_INVALID, METRIC_EGRESS, lxc_id, src_id, 0, 0);
	/* The source MAC is checked for every frame, ARP included. */
	if (eth_addrcmp(eth.h_source, ep->mac))
		return send_drop_notify(skb, DROP_INVALID_SMAC, METRIC_EGRESS, lxc_id, src_id, 0, 0);
	if (eth.h_proto == bpf_htons(ETH_P_ARP)) {
		ret = arp_check(skb, ep);
		if (ret)
			return send_drop_notify(skb, ret, METRIC_EGRESS, lxc_id, src_id, 0, 0);
		return TC_ACT_OK;
	}

	/* IPv4 and IPv6 only: anything else (802.1Q, 802.1ad, unknown
	 * ethertypes, a disabled family) is dropped as Cilium does. */
	ret = parse_ip(skb, eth.h_proto, &f);
	if (ret > 0)
		return send_drop_notify(skb, DROP_UNKNOWN_L3, METRIC_EGRESS, lxc_id, src_id, 0, 0);
	if (ret < 0)
		return send_drop_notify(skb, parse_drop_reason(ret), METRIC_EGRESS, lxc_id,
					src_id, 0, 0);

	/* anti-spoofing */
	if (f.family == 4) {
		if (!ep->ipv4 || f.saddr.p32[0] != ep->ipv4)
			return send_drop_notify(skb, DROP_INVALID_SIP, METRIC_EGRESS, lxc_id,
						src_id, 0, 0);
	} else {
		int own = ipv6_addr_equals(&f.saddr, ep->ipv6);
		int local_src = ipv6_addr_is_linklocal(&f.saddr) || ipv6_addr_is_zero(&f.saddr);

		/* Neighbour discovery passes, but only as ND (hop limit 255),
		 * only from the endpoint's own or a link-local/DAD source and
		 * only towards its link or the host; ND sent anywhere else
		 * faces conntrack and policy like any ICMPv6. */
		if (f.is_nd) {
			if (!ipv6_hoplimit_is_255(skb))
				return send_drop_notify(skb, DROP_INVALID, METRIC_EGRESS, lxc_id,
							src_id, 0, 0);
			if (!own && !local_src)
				return send_drop_notify(skb, DROP_INVALID_SIP, METRIC_EGRESS, lxc_id,
							src_id, 0, 0);
			if (nd_is_link_local(&f))
				return TC_ACT_OK;
		}
		if (!own) {
			/* A link-local source is only for link-scope traffic (it
			 * cannot be routed on): MLD passes as control traffic, the
			 * rest faces conntrack and policy with the host as peer. */
			if (local_src && f.nexthdr == IPPROTO_ICMPV6 && icmp6_is_mld(f.icmp_type) &&
			    ipv6_addr_is_multicast(&f.daddr))
				return TC_ACT_OK;
			if (!local_src || !(ipv6_addr_is_linklocal(&f.daddr) ||
					    ipv6_addr_is_multicast(&f.daddr)))
				return send_drop_notify(skb, DROP_INVALID_SIP, METRIC_EGRESS, lxc_id,
							src_id, 0, 0);
		}
	}

	now = bpf_now_sec();
	ret = lb_lxc_translate(skb, &f, now, &lb);
	if (ret)
		return send_drop_notify(skb, ret, METRIC_EGRESS, lxc_id, src_id, 0, 0);
	/* every packet, a service's backend port too, before conntrack: an
	 * entry from before the tunnel existed does not let it through */
	if (is_encap(&f))
		return send_drop_notify(skb, DROP_ENCAP_PROHIBITED, METRIC_EGRESS, lxc_id, src_id, 0, 0);

	ct = ct_lookup(&f, CT_EGRESS, len, now, &ct_src_id, &monitor, &nat);
	if (ct == CT_NEW && f.is_error)
		ct = ct_lookup_related(skb, &f, now, 1, &nat);
	debug_ct_lookup(skb, &f, lxc_id, CT_EGRESS, ct);
	/* a reply (or an ICMP error) from this endpoint as a service's backend */
	if (nat.rev_nat_index && ((ct == CT_REPLY && lb_rev_nat(skb, &f, &nat) < 0) ||
				  (ct == CT_RELATED && lb_rev_nat_icmp(skb, &f, &nat) < 0)))
		return send_drop_notify(skb, DROP_INVALID, METRIC_EGRESS, lxc_id, src_id, 0, 0);
	dst_ep = lookup_lxc(&f, &f.daddr);
	/* The peer's identity: a reply's is the one its entry recorded for the
	 * originator; others need a lookup, skipped for an established packet
	 * to the stack that neither policy counters nor a trace will use. */
	if (dst_ep)
		dst_id = dst_ep->sec_identity;
	else if (ct == CT_REPLY)
		dst_id = ct_src_id;
	else if (ct == CT_NEW || (ep->flags & EP_F_EGRESS_ENFORCED) ||
		 trace_wanted(TRACE_TO_STACK, ct, monitor))
		dst_id = ipcache_identity(&f, &f.daddr);
	send_trace_notify(skb, TRACE_FROM_LXC, lxc_id, src_id, dst_id, 0, ct, monitor);
	if (ct == CT_ESTABLISHED) {
		/* established flows pass without a verdict; the lookups only keep
		 * the per-entry policy counters counting every forward packet */
		if (ep->flags & EP_F_EGRESS_ENFORCED)
			policy_can_access_proxy(lxc_id, POLICY_EGRESS, dst_id, &f, len, NULL,
						&proxy_port);
		if (dst_ep && (dst_ep->flags & EP_F_INGRESS_ENFORCED))
			policy_can_access_proxy(dst_ep->lxc_id, POLICY_INGRESS, src_id, &f, len,
						NULL, &in_port);
		if (f.nexthdr != IPPROTO_TCP)
			proxy_port = in_port = 0;
		/* A flow its entry did not send to the proxy when it opened (an
		 * L4 policy since replaced by an L7 one) goes there too, as in
		 * Cilium: the listener resets it rather than let it pass L7. */
		if ((nat.flags & CT_F_PROXY_REDIRECT) || proxy_port || in_port) {
			/* the proxy's socket of this connection; else the listener the
			 * policy names now: a first SYN the listener dropped (accept
			 * queue full) left the entry, and its retransmissions must
			 * still reach the proxy; anything else gets the listener's
			 * RST. No listener: a drop. */
			ret = proxy_assign(skb, &f, proxy_port ? proxy_port : in_port);
			proxy_port = 0;
			if (ret)
				return send_drop_notify(skb, ret, METRIC_EGRESS, lxc_id, src_id,
							dst_id, dst_ep ? dst_ep->lxc_id : 0);
			to_proxy = 1;
		}
	} else if (ct == CT_NEW) {
		int tcp = f.nexthdr == IPPROTO_TCP;

		if (ep->flags & EP_F_EGRESS_ENFORCED) {
			ret = policy_can_access_proxy(lxc_id, POLICY_EGRESS, dst_id, &f, len, &match,
						      &proxy_port);
			send_policy_verdict_notify(skb, &f, lxc_id, src_id, dst_id,
						   dst_ep ? dst_ep->lxc_id : 0, METRIC_EGRESS,
						   ret, match);
			if (ret) {
				send_debug(skb, lxc_id, DBG_POLICY_DENIED, src_id, dst_id, 0);
				return send_drop_notify(skb, ret, METRIC_EGRESS, lxc_id, src_id,
							dst_id, dst_ep ? dst_ep->lxc_id : 0);
			}
		}
		if (dst_ep && (dst_ep->flags & EP_F_INGRESS_ENFORCED)) {
			ret = policy_can_access_proxy(dst_ep->lxc_id, POLICY_INGRESS, src_id, &f,
						      len, &match, &in_port);
			send_policy_verdict_notify(skb, &f, dst_ep->lxc_id, src_id, dst_id,
						   dst_ep->lxc_id, METRIC_INGRESS, ret, match);
			if (ret) {
				send_debug(skb, dst_ep->lxc_id, DBG_POLICY_DENIED, src_id, dst_id, 0);
				return send_drop_notify(skb, ret, METRIC_INGRESS, dst_ep->lxc_id,
							src_id, dst_id, dst_ep->lxc_id);
			}
		}
		/* the egress proxy's upstream connection meets the destination's
		 * ingress proxy in to-container */
		if (!proxy_port)
			proxy_port = in_port;
		if (!tcp)
			proxy_port = 0;
		if (proxy_port) {
			/* before the CT entry: a SYN the proxy did not get opens
			 * nothing, its retransmission meets the policy again */
			ret = proxy_assign(skb, &f, proxy_port);
			if (ret)
				return send_drop_notify(skb, ret, METRIC_EGRESS, lxc_id, src_id,
							dst_id, dst_ep ? dst_ep->lxc_id : 0);
			to_proxy = 1;
		}
		if (!f.is_error) {	/* an unrelated ICMP error opens no flow */
			ct_flags = lb.nat;
			if (to_proxy)
				ct_flags.flags |= CT_F_PROXY_REDIRECT;
			ret = ct_create(&f, CT_EGRESS, src_id, len, now, lxc_id, &ct_flags);
			if (ret)
				return send_drop_notify(skb, ret, METRIC_EGRESS, lxc_id, src_id,
							dst_id, dst_ep ? dst_ep->lxc_id : 0);
			debug_ct_created(skb, &f, lxc_id, src_id);
		}
	}

	if (lb.nat.rev_nat_index && ct != CT_REPLY)
		lb_lxc_track(&f, &lb, now);
	frag_record(&f);
	update_metrics(REASON_FORWARDED, METRIC_EGRESS, len);
	if (to_proxy) {
		/* the stack delivers it locally (policy routing on the mark) to
		 * the socket assigned above */
		skb->mark = proxy_mark(proxy_port);
		send_trace_notify(skb, TRACE_TO_PROXY, lxc_id, src_id, dst_id,
				  dst_ep ? dst_ep->lxc_id : 0, ct, monitor);
		return TC_ACT_OK;
	}
	if (dst_ep) {
		send_trace_notify(skb, TRACE_TO_LXC, lxc_id, src_id, dst_ep->sec_identity,
				  dst_ep->lxc_id, ct, monitor);
		send_debug(skb, lxc_id, DBG_LOCAL_DELIVERY, dst_ep->lxc_id, src_id, 0);
		return redirect_to_endpoint(skb, &f, dst_ep);
	}
	tun_ifindex = tunnel_ifindex();
	if (tun_ifindex) {
		__u32 tun = tunnel_endpoint_of(f.family, &f.daddr);

		/* another node's: TTL as the router we are, then the tunnel
		 * (an expiring TTL goes to the stack, which answers it) */
		if (tun && l3_dec_ttl(skb, f.family) == 0) {
			send_trace_notify(skb, TRACE_TO_OVERLAY, lxc_id, src_id, dst_id, 0, ct, monitor);
			ret = encap_and_redirect(skb, tun_ifindex, tun, src_id);
			if (ret < 0)
				return send_drop_notify(skb, -ret, METRIC_EGRESS, lxc_id, src_id,
							dst_id, 0);
			return ret;
		}
	}
	send_trace_notify(skb, TRACE_TO_STACK, lxc_id, src_id, dst_id, 0, ct, monitor);
	send_debug(skb, lxc_id, DBG_TO_STACK, 0, 0, 0);
	return TC_ACT_OK;
}

__section("tc/to-container")
int to_container(struct __sk_buff *skb)
{
	struct endpoint_info *ep, *src_ep;
	struct ethhdr eth;
	struct flow f = {};
	struct ct_nat nat, no_nat = {};
	__u32 now, len = skb->len, src_id = 0, dst_id, ct_src_id = 0, mark = skb->mark;
	__u16 lxc_id, proxy_port = 0;
	int to_proxy = 0, tcp;
	__u8 monitor = 0, match = POLICY_MATCH_NONE;
	int ret, ct;

	ep = lookup_ep_ifindex(skb->ifindex);
	if (!ep)
		return TC_ACT_OK;
	lxc_id = ep->lxc_id;
	dst_id = ep->sec_identity;

	if (eth_load(skb, &eth) < 0)
		return send_drop_notify(skb, DROP_INVALID, METRIC_INGRESS, lxc_id, 0, dst_id, lxc_id);
	ret = parse_ip(skb, eth.h_proto, &f);
	if (ret > 0)
		return TC_ACT_OK;	/* ARP and other non-IP, from the host */
	if (ret < 0)
		return send_drop_notify(skb, parse_drop_reason(ret), METRIC_INGRESS, lxc_id, 0,
					dst_id, lxc_id);

	if (f.family == 6) {
		/* ND and MLD from the host side pass as such (MLD from a
		 * link-local source, or the unspecified one while the host's
		 * address is tentative, RFC 3590); every other IPv6 packet,
		 * link-local or not, goes through conntrack and policy. */
		if (f.is_nd && ipv6_hoplimit_is_255(skb))
			return TC_ACT_OK;
		if (f.nexthdr == IPPROTO_ICMPV6 && icmp6_is_mld(f.icmp_type) &&
		    (ipv6_addr_is_linklocal(&f.saddr) || ipv6_addr_is_zero(&f.saddr)))
			return TC_ACT_OK;
	}

	now = bpf_now_sec();
	ct = ct_lookup(&f, CT_INGRESS, len, now, &ct_src_id, &monitor, &nat);
	if (ct == CT_NEW && f.is_error)
		ct = ct_lookup_related(skb, &f, now, 0, &nat);
	debug_ct_lookup(skb, &f, lxc_id, CT_INGRESS, ct);
	/* a reply (or an ICMP error) about a flow to a service's backend
	 * outside this node's endpoints */
	if (nat.rev_nat_index && ((ct == CT_REPLY && lb_rev_nat(skb, &f, &nat) < 0) ||
				  (ct == CT_RELATED && lb_rev_nat_icmp(skb, &f, &nat) < 0)))
		return send_drop_notify(skb, DROP_INVALID, METRIC_INGRESS, lxc_id, 0, dst_id, lxc_id);
	/* the ingress proxy's own upstream connection is not redirected again */
	tcp = f.nexthdr == IPPROTO_TCP && (mark & MARK_MAGIC_HOST_MASK) != MARK_MAGIC_PROXY_INGRESS;
	if (ct == CT_NEW) {
		/* A proxy's upstream connection carries its client's identity in
		 * the mark (a container cannot forge one: crossing its veth into
		 * the host clears skb->mark). */
		if (proxy_mark_is_upstream(mark) ||
		    (mark & MARK_MAGIC_HOST_MASK) == MARK_MAGIC_IDENTITY) {
			/* the same layout: from-overlay's mark carries the
			 * tunnel key's identity of another node's sender */
			src_id = proxy_mark_identity(mark);
		} else {
			src_ep = lookup_lxc(&f, &f.saddr);
			src_id = src_ep ? src_ep->sec_identity : ipcache_identity(&f, &f.saddr);
		}
		if (ep->flags & EP_F_INGRESS_ENFORCED) {
			ret = policy_can_access_proxy(lxc_id, POLICY_INGRESS, src_id, &f, len, &match,
						      &proxy_port);
			send_policy_verdict_notify(skb, &f, lxc_id, src_id, dst_id, lxc_id,
						   METRIC_INGRESS, ret, match);
			if (ret) {
				send_debug(skb, lxc_id, DBG_POLICY_DENIED, src_id, dst_id, 0);
				return send_drop_notify(skb, ret, METRIC_INGRESS, lxc_id, src_id,
							dst_id, lxc_id);
			}
		}
		if (!tcp)
			proxy_port = 0;
		if (!f.is_error) {
			if (proxy_port)
				no_nat.flags = CT_F_PROXY_REDIRECT;
			ret = ct_create(&f, CT_INGRESS, src_id, len, now, lxc_id, &no_nat);
			if (ret)
				return send_drop_notify(skb, ret, METRIC_INGRESS, lxc_id, src_id,
							dst_id, lxc_id);
			debug_ct_created(skb, &f, lxc_id, src_id);
		}
	} else {
		/* An established packet's entry recorded its sender (the peer);
		 * a reply's or a related error's records the endpoint's own side,
		 * so the peer is looked up, only for a trace that will be sent. */
		if (ct == CT_ESTABLISHED)
			src_id = ct_src_id;
		else if ((mark & MARK_MAGIC_HOST_MASK) == MARK_MAGIC_IDENTITY)
			src_id = proxy_mark_identity(mark);
		else if (trace_wanted(TRACE_TO_LXC, ct, monitor))
			src_id = ipcache_identity(&f, &f.saddr);
		if (ct == CT_ESTABLISHED && (ep->flags & EP_F_INGRESS_ENFORCED))
			policy_can_access_proxy(lxc_id, POLICY_INGRESS, src_id, &f, len, NULL,
						&proxy_port);  /* counters, and the listener */
		/* also a flow opened before its entry got a proxy port (the
		 * listener resets it, as in from-container) */
		to_proxy = ct == CT_ESTABLISHED &&
			   ((nat.flags & CT_F_PROXY_REDIRECT) || (tcp && proxy_port));
		if (!to_proxy)
			proxy_port = 0;
	}
	if (proxy_port)
		to_proxy = 1;

	frag_record(&f);
	if (to_proxy) {
		/* from-host assigns the socket: by the mark's port for a new
		 * flow, by the tuple for the proxy's existing connection */
		ret = proxy_hairpin(skb, proxy_port);
		if (ret < 0)
			return send_drop_notify(skb, DROP_PROXY_LOOKUP_FAILED, METRIC_INGRESS,
						lxc_id, src_id, dst_id, lxc_id);
		update_metrics(REASON_FORWARDED, METRIC_INGRESS, len);
		send_trace_notify(skb, TRACE_TO_PROXY, lxc_id, src_id, dst_id, lxc_id, ct, monitor);
		return ret;
	}
	update_metrics(REASON_FORWARDED, METRIC_INGRESS, len);
	send_trace_notify(skb, TRACE_TO_LXC, lxc_id, src_id, dst_id, lxc_id, ct, monitor);
	send_debug(skb, lxc_id, DBG_LOCAL_DELIVERY, lxc_id, src_id, 0);
	return TC_ACT_OK;
}

__section("tc/from-host")
int from_host(struct __sk_buff *skb)
{
	struct endpoint_info *ep;
	struct ethhdr eth;
	struct flow f = {};
	__u32 mark = skb->mark, dst_id = 0;
	__u16 lxc_id = 0;
	int ret;

	if ((mark & MARK_MAGIC_HOST_MASK) != MARK_MAGIC_TO_PROXY)
		return TC_ACT_OK;	/* the host's own traffic */
	if (eth_load(skb, &eth) < 0 || parse_ip(skb, eth.h_proto, &f) != 0 ||
	    f.nexthdr != IPPROTO_TCP)
		return send_drop_notify(skb, DROP_INVALID, METRIC_INGRESS, 0, 0, 0, 0);
	ep = lookup_lxc(&f, &f.daddr);
	if (ep) {
		lxc_id = ep->lxc_id;
		dst_id = ep->sec_identity;
	}
	ret = proxy_assign(skb, &f, bpf_htons(mark >> 16));
	if (ret)
		return send_drop_notify(skb, ret, METRIC_INGRESS, lxc_id, 0, dst_id, lxc_id);
	/* to-container addressed the frame to the endpoint's MAC: the stack
	 * would drop it as another host's */
	bpf_skb_change_type(skb, PACKET_HOST);
	return TC_ACT_OK;
}

/* The host's own traffic for another node's range (helper routes send it
 * via cilium_host): encapsulated with identity reserved:host, or a proxy
 * upstream connection's source identity from its mark. Anything else on
 * cilium_host's egress (ARP among it) passes. */
__section("tc/to-overlay")
int to_overlay(struct __sk_buff *skb)
{
	union v6addr daddr = {};
	struct ethhdr eth;
	__u32 ifindex = tunnel_ifindex(), tun, src_id = IDENTITY_HOST, mark = skb->mark;
	__u8 family;
	int ret;

	if (!ifindex || eth_load(skb, &eth) < 0 ||
	    load_l3_daddr(skb, eth.h_proto, &daddr, &family) < 0 || !family)
		return TC_ACT_OK;
	tun = tunnel_endpoint_of(family, &daddr);
	if (!tun)
		return TC_ACT_OK;
	if (proxy_mark_is_upstream(mark))
		src_id = proxy_mark_identity(mark);
	/* no conntrack here: traced as an established packet would be */
	send_trace_notify(skb, TRACE_TO_OVERLAY, 0, src_id, 0, 0, CT_ESTABLISHED, 0);
	ret = encap_and_redirect(skb, ifindex, tun, src_id);
	if (ret < 0)
		return send_drop_notify(skb, -ret, METRIC_EGRESS, 0, src_id, 0, 0);
	return ret;
}

/* A packet from another node, decapsulated by cilium_vxlan (external
 * mode: the VNI is in the tunnel metadata). Its sender's identity is the
 * tunnel key's id (a node's own traffic, reserved:host there, is
 * reserved:remote-node here). For a local endpoint: marked with the
 * identity, routed (MACs, TTL) and handed to the endpoint veth's egress,
 * where to-container enforces ingress policy with it; anything else (this
 * host's addresses) goes up the stack marked the same way. */
__section("tc/from-overlay")
int from_overlay(struct __sk_buff *skb)
{
	struct bpf_tunnel_key key = {};
	struct endpoint_info *ep;
	union v6addr daddr = {};
	struct ethhdr eth;
	__u8 smac[6], dmac[6], family;
	__u32 src_id;

	if (bpf_skb_get_tunnel_key(skb, &key, sizeof(key), 0) < 0)
		return send_drop_notify(skb, DROP_NO_TUNNEL_KEY, METRIC_INGRESS, 0, 0, 0, 0);
	src_id = key.tunnel_id;
	if (src_id == IDENTITY_HOST)
		src_id = IDENTITY_REMOTE_NODE;
	if (!tunnel_sender_is_node(key.remote_ipv4))
		return send_drop_notify(skb, DROP_UNKNOWN_SENDER, METRIC_INGRESS, 0, src_id, 0, 0);
	if (eth_load(skb, &eth) < 0 || load_l3_daddr(skb, eth.h_proto, &daddr, &family) < 0)
		return send_drop_notify(skb, DROP_INVALID, METRIC_INGRESS, 0, src_id, 0, 0);
	send_trace_notify(skb, TRACE_FROM_OVERLAY, 0, src_id, 0, 0, CT_NEW, 0);
	/* identity_mark(MARK_MAGIC_IDENTITY, id): docker_cilium/datapath/marks.py */
	skb->mark = ((src_id & 0xFFFF) << 16) | MARK_MAGIC_IDENTITY | ((src_id >> 24) & 0xFF);
	if (family) {
		ep = family == 4 ? lookup_lxc4(daddr.p32[0]) : lookup_lxc6(&daddr);
		if (ep) {
			__u32 ifindex = ep->ifindex;

			int ret;

			__builtin_memcpy(smac, ep->node_mac, 6);
			__builtin_memcpy(dmac, ep->mac, 6);
			ret = l3_route(skb, family, smac, dmac);
			if (ret == 0)
				return bpf_redirect(ifindex, 0);
			if (ret < -1)
				return send_drop_notify(skb, DROP_WRITE_ERROR, METRIC_INGRESS,
							0, src_id, 0, 0);
		}
	}
	/* the inner destination MAC is not cilium_vxlan's: the stack would
	 * take it for another host's frame */
	bpf_skb_change_type(skb, PACKET_HOST);
	return TC_ACT_OK;
}

/* GPL-compatible (as the SPDX line above): bpf_perf_event_output() is a
 * GPL-only helper. */
char __license[] __section("license") = "Dual BSD/GPL";
