/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* L4 parsing shared by IPv4 and IPv6: fills ports, TCP flags and the ICMP
 * classification of a struct flow. */
#ifndef __LIB_L4_H_
#define __LIB_L4_H_

#include "common.h"

#ifndef IPPROTO_ICMPV6
#define IPPROTO_ICMPV6 58
#endif

/* negative results of the header parsers */
#define PARSE_INVALID		(-1)	/* truncated or malformed: DROP_INVALID */
#define PARSE_FRAG_NOT_FOUND	(-2)	/* later fragment, first one unseen */
#define PARSE_INVALID_EXTHDR	(-3)	/* more IPv6 extension headers than we walk */

static __always_inline int parse_drop_reason(int ret)
{
	if (ret == PARSE_FRAG_NOT_FOUND)
		return DROP_FRAG_NOT_FOUND;
	return ret == PARSE_INVALID_EXTHDR ? DROP_INVALID_EXTHDR : DROP_INVALID;
}

static __always_inline int icmp4_is_error(__u8 type)
{
	return type == ICMP_DEST_UNREACH || type == ICMP_TIME_EXCEEDED ||
	       type == ICMP_PARAMETERPROB || type == ICMP_SOURCE_QUENCH;
}

static __always_inline int icmp6_is_error(__u8 type)
{
	return type == ICMPV6_DEST_UNREACH || type == ICMPV6_PKT_TOOBIG ||
	       type == ICMPV6_TIME_EXCEED || type == ICMPV6_PARAMPROB;
}

static __always_inline int icmp6_is_nd(__u8 type)
{
	/* RS, RA, NS, NA, redirect */
	return type >= 133 && type <= 137;
}

static __always_inline int icmp6_is_mld(__u8 type)
{
	/* MLD query, report, done; MLDv2 report */
	return (type >= 130 && type <= 132) || type == 143;
}

/* Parse the L4 header at f->l4_off. 'inner' is set when parsing the packet
 * quoted in an ICMP error (only the first 8 bytes are guaranteed there).
 * Returns 0 or a negative value when the header is truncated. */
static __always_inline int parse_l4(struct __sk_buff *skb, struct flow *f, int inner)
{
	__u8 buf[16] __attribute__((aligned(8)));

	f->sport = 0;
	f->dport = 0;
	switch (f->nexthdr) {
	case IPPROTO_TCP:
		if (inner) {
			if (bpf_skb_load_bytes(skb, f->l4_off, buf, 4) < 0)
				return -1;
		} else {
			if (bpf_skb_load_bytes(skb, f->l4_off, buf, 14) < 0)
				return -1;
			f->tcp_flags = buf[13];
		}
		f->sport = *(__u16 *)&buf[0];
		f->dport = *(__u16 *)&buf[2];
		break;
	case IPPROTO_UDP:
	case 132: /* SCTP */
		if (bpf_skb_load_bytes(skb, f->l4_off, buf, 4) < 0)
			return -1;
		f->sport = *(__u16 *)&buf[0];
		f->dport = *(__u16 *)&buf[2];
		break;
	case IPPROTO_ICMP:
	case IPPROTO_ICMPV6:
		if (bpf_skb_load_bytes(skb, f->l4_off, buf, 8) < 0)
			return -1;
		f->icmp_type = buf[0];
		if (f->nexthdr == IPPROTO_ICMP) {
			if (buf[0] == ICMP_ECHO) {
				f->is_echo = 1;
				f->sport = *(__u16 *)&buf[4];
			} else if (buf[0] == ICMP_ECHOREPLY) {
				f->is_echo = 1;
				f->dport = *(__u16 *)&buf[4];
			} else if (!inner && icmp4_is_error(buf[0])) {
				f->is_error = 1;
			}
		} else {
			if (buf[0] == ICMPV6_ECHO_REQUEST) {
				f->is_echo = 1;
				f->sport = *(__u16 *)&buf[4];
			} else if (buf[0] == ICMPV6_ECHO_REPLY) {
				f->is_echo = 1;
				f->dport = *(__u16 *)&buf[4];
			} else if (!inner && icmp6_is_error(buf[0])) {
				f->is_error = 1;
			} else if (!inner && icmp6_is_nd(buf[0])) {
				f->is_nd = 1;
			}
		}
		break;
	default:
		break;
	}
	return 0;
}

static __always_inline int flow_is_l4_ports(const struct flow *f)
{
	return f->nexthdr == IPPROTO_TCP || f->nexthdr == IPPROTO_UDP ||
	       f->nexthdr == 132;
}

#endif /* __LIB_L4_H_ */
