/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Shared types and constants for the docker-cilium datapath.
 *
 * Every struct here is mirrored EXACTLY by a ctypes.Structure in the module
 * of its map, docker_cilium/datapath/maps/<name>.py, and every number Python
 * shares has one Python copy (tests/unit/test_maps_layout.py and
 * tests/unit/test_c_constants.py check both).
 * All padding is explicit so that keys hashed by the kernel never contain
 * uninitialised bytes.
 */
#ifndef __LIB_COMMON_H_
#define __LIB_COMMON_H_

#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <linux/icmpv6.h>
/* <linux/icmp.h> pulls in libc's socket headers: define what we need. */
#define ICMP_ECHOREPLY		0
#define ICMP_DEST_UNREACH	3
#define ICMP_SOURCE_QUENCH	4
#define ICMP_ECHO		8
#define ICMP_TIME_EXCEEDED	11
#define ICMP_PARAMETERPROB	12

#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#ifndef __always_inline
#define __always_inline inline __attribute__((always_inline))
#endif
#define __section(X) __attribute__((section(X), used))

#ifndef likely
#define likely(X) __builtin_expect(!!(X), 1)
#define unlikely(X) __builtin_expect(!!(X), 0)
#endif

/* ---- reserved security identities ---- */
#define IDENTITY_UNKNOWN	0
#define IDENTITY_HOST		1
#define IDENTITY_WORLD		2
#define IDENTITY_REMOTE_NODE	6

/* ---- endpoint flags (endpoint_info.flags) ---- */
#define EP_F_INGRESS_ENFORCED	(1 << 0)
#define EP_F_EGRESS_ENFORCED	(1 << 1)

/* ---- directions ---- */
#define POLICY_INGRESS		0
#define POLICY_EGRESS		1
#define METRIC_INGRESS		1	/* to-container */
#define METRIC_EGRESS		2	/* from-container */

/* ---- conntrack key flags (which program created the entry) ---- */
#define CT_EGRESS		0	/* originated by the local endpoint */
#define CT_INGRESS		1	/* originated by the peer, towards the endpoint */
#define CT_SERVICE		2	/* a flow to a service VIP (pre-translation tuple):
					 * its backend (lib/lb_lxc.h) */

/* ---- conntrack entry flags ---- */
#define CT_F_RX_CLOSING		(1 << 0)
#define CT_F_TX_CLOSING		(1 << 1)
#define CT_F_SEEN_NON_SYN	(1 << 2)
#define CT_F_NODE_PORT		(1 << 3)	/* reserved (load balancer) */
#define CT_F_PROXY_REDIRECT	(1 << 4)	/* the originator's packets go to the L7 proxy's
						 * socket (lib/proxy.h) */
#define CT_F_SEEN_REPLY		(1 << 5)	/* a packet went the reply way */
#define CT_F_LOOPBACK		(1 << 6)	/* hairpin service flow: source rewritten
						 * to IPV4_LOOPBACK (lib/lb_lxc.h) */

/* ---- conntrack timeouts (seconds) ---- */
#ifndef CT_LIFETIME_TCP
#define CT_LIFETIME_TCP		21600
#endif
#ifndef CT_SYN_TIMEOUT
#define CT_SYN_TIMEOUT		60
#endif
#ifndef CT_LIFETIME_NONTCP
#define CT_LIFETIME_NONTCP	60
#endif
#ifndef CT_CLOSE_TIMEOUT
#define CT_CLOSE_TIMEOUT	10
#endif

/* ---- per-endpoint conntrack budget ----
 * An endpoint may create at most CT_EP_BUDGET entries per CT_BUDGET_WINDOW
 * seconds that have not (yet) seen a reply; the first reply gives the
 * entry back. An unreplied entry lives at most CT_SYN_TIMEOUT /
 * CT_LIFETIME_NONTCP from its creation, so one endpoint holds at most about
 * 2 x CT_EP_BUDGET unreplied entries of the shared LRU tables. */
#ifndef CT_EP_BUDGET
#define CT_EP_BUDGET		4096
#endif
#ifndef CT_BUDGET_WINDOW
#define CT_BUDGET_WINDOW	60
#endif

/* ---- map sizes (overridable with -D through loader.compile_datapath) ---- */
#ifndef ENDPOINTS_MAP_SIZE
#define ENDPOINTS_MAP_SIZE	65535
#endif
#ifndef POLICY_MAP_SIZE
#define POLICY_MAP_SIZE		65536
#endif
#ifndef IPCACHE_MAP_SIZE
#define IPCACHE_MAP_SIZE	512000
#endif
#ifndef TUNNEL_MAP_SIZE
#define TUNNEL_MAP_SIZE		65536	/* Cilium's; two ranges per node */
#endif
#ifndef CT_MAP_SIZE
/* per family; LRU hashes are preallocated: 131072 entries ~ 14 MB (v4) +
 * 18 MB (v6). Raise with compile_datapath(defines={"CT_MAP_SIZE": N}). */
#define CT_MAP_SIZE		131072
#endif
#ifndef FRAG_MAP_SIZE
/* datagrams in flight whose later fragments still need the first one's ports */
#define FRAG_MAP_SIZE		8192
#endif
#ifndef METRICS_MAP_SIZE
#define METRICS_MAP_SIZE	1024
#endif

/* ---- skb->mark (Cilium's MARK_MAGIC_*; docker_cilium/datapath/marks.py) ----
 * bits 8-11: the magic. TO_PROXY: | proxy port << 16, set by BPF on packets
 * handed to the proxy (routed locally by table 2004). PROXY_INGRESS/EGRESS:
 * set by the proxy on its upstream sockets, with the source identity:
 * bits 16-31 = identity bits 0-15, bits 0-7 = identity bits 24-31.
 * IDENTITY: the same identity layout, set by from-overlay from the tunnel
 * key on a packet that came from another node. */
#define MARK_MAGIC_HOST_MASK	0x0F00
#define MARK_MAGIC_TO_PROXY	0x0200
#define MARK_MAGIC_PROXY_INGRESS	0x0A00
#define MARK_MAGIC_PROXY_EGRESS	0x0B00
#define MARK_MAGIC_IDENTITY	0x0F00

/* ---- drop reasons (Cilium numbering); 0 = forwarded ---- */
#define REASON_FORWARDED	0
#define DROP_INVALID_SMAC	130
#define DROP_INVALID_DMAC	131
#define DROP_INVALID_SIP	132
#define DROP_POLICY		133
#define DROP_INVALID		134
#define DROP_CT_INVALID_HDR	135
#define DROP_UNKNOWN_L3		139
#define DROP_WRITE_ERROR	141	/* a packet rewrite (the tunnel key) failed */
#define DROP_NO_TUNNEL_KEY	147	/* from-overlay: no tunnel metadata on the packet */
#define DROP_NO_LXC		152
#define DROP_CT_CREATE_FAILED	155
#define DROP_INVALID_EXTHDR	156	/* more IPv6 extension headers than the parser walks */
#define DROP_NO_SERVICE		158
#define DROP_POLICY_L4		159
#define DROP_POLICY_CIDR	162
#define DROP_ENCAP_PROHIBITED	170	/* a container's UDP to the tunnel port */
#define DROP_UNKNOWN_SENDER	172	/* from-overlay: the outer source is no node */
#define DROP_FRAG_NOT_FOUND	175
#define DROP_PROXY_LOOKUP_FAILED	178	/* no proxy socket for a redirected flow */
#define DROP_PROXY_SET_FAILED	179	/* bpf_sk_assign() refused the socket */
#define DROP_POLICY_DENY	181
#define DROP_VLAN_FILTERED	182

/* ---- notification types (cilium monitor) ---- */
#define NOTIFY_DROP		1
#define NOTIFY_DEBUG		2
#define NOTIFY_CAPTURE		3
#define NOTIFY_TRACE		4
#define NOTIFY_POLICY_VERDICT	5

/* trace observation points (notify.subtype for NOTIFY_TRACE) */
#define TRACE_TO_LXC		0
#define TRACE_TO_PROXY		1
#define TRACE_TO_HOST		2
#define TRACE_TO_STACK		3
#define TRACE_TO_OVERLAY	4
#define TRACE_FROM_LXC		5
#define TRACE_FROM_OVERLAY	9	/* from-overlay: a packet decapsulated from cilium_vxlan */

/* trace reasons (notify_msg.reason of NOTIFY_TRACE): the connection state,
 * numbered as conntrack.h's CT_NEW ... CT_RELATED (Cilium's trace_reason) */
#define TRACE_REASON_POLICY		0	/* new connection, policy evaluated */
#define TRACE_REASON_CT_ESTABLISHED	1
#define TRACE_REASON_CT_REPLY		2
#define TRACE_REASON_CT_RELATED		3

/* policy verdict match types (notify_msg.match_type of NOTIFY_POLICY_VERDICT):
 * which policy entry decided (lib/policy.h lookup order) */
#define POLICY_MATCH_NONE	0	/* no entry: default deny */
#define POLICY_MATCH_L3_ONLY	1	/* (identity, any port) */
#define POLICY_MATCH_L3_L4	2	/* (identity, port/proto) */
#define POLICY_MATCH_L4_ONLY	3	/* (any identity, port/proto) */
#define POLICY_MATCH_ALL	4	/* (any identity, any port) */

/* debug message types (notify_msg.subtype of NOTIFY_DEBUG), Cilium's dbg.h
 * numbering; arguments in notify_msg.arg1..arg3 */
#define DBG_LOCAL_DELIVERY	2	/* arg1: endpoint id, arg2: source identity */
#define DBG_POLICY_DENIED	5	/* arg1: source identity, arg2: destination identity */
#define DBG_CT_VERDICT		15	/* arg1: CT state */
#define DBG_TO_STACK		20	/* arg1: 0 (policy was not skipped) */
#define DBG_CT_LOOKUP4_1	48	/* arg1: saddr, arg2: daddr (network order), arg3: sport << 16 | dport */
#define DBG_CT_LOOKUP4_2	49	/* arg1: nexthdr << 8 | CT key flags, arg2: 0 */
#define DBG_CT_CREATED4		50	/* arg1: 0, arg2: source identity */
#define DBG_CT_LOOKUP6_1	51	/* as 4_1 with the addresses' last 4 bytes */
#define DBG_CT_LOOKUP6_2	52
#define DBG_CT_CREATED6		53

/* cilium_config flags */
#define CFG_F_DEBUG		(1 << 1)	/* emit NOTIFY_DEBUG events */

/* datapath_config.monitor_aggregation: Cilium's --monitor-aggregation levels.
 * none: trace every packet at every observation point; lowest/low: no
 * from-endpoint traces; medium: to-endpoint/to-stack traces only for new
 * connections, connection state changes (first reply, FIN, RST) and at most
 * once per CT_REPORT_INTERVAL per connection; maximum: as medium without the
 * periodic reports. Drops and policy verdicts are never aggregated. */
#define MONITOR_AGGREGATION_NONE	0
#define MONITOR_AGGREGATION_LOWEST	1
#define MONITOR_AGGREGATION_LOW		2
#define MONITOR_AGGREGATION_MEDIUM	3
#define MONITOR_AGGREGATION_MAX		4

#ifndef CT_REPORT_INTERVAL
#define CT_REPORT_INTERVAL	5	/* seconds between two traces of one connection (medium) */
#endif

#define NOTIFY_CAPTURE_LEN	128

/* policy_key marker: an entry with this proto and dport 0 only records that
 * the identity has L4 (port) rules, so that a miss is reported as
 * DROP_POLICY_L4 (159) instead of DROP_POLICY (133). It never allows anything. */
#define POLICY_PROTO_L4_MARKER	255

union v6addr {
	__u8  addr[16];
	__u32 p32[4];
	__u64 d[2];
};

/* cilium_ep_ifindex value and cilium_lxc value */
struct endpoint_info {
	__u32 ifindex;		/* host-side veth ifindex */
	__u16 lxc_id;		/* endpoint id */
	__u16 flags;		/* EP_F_* */
	__u32 sec_identity;
	__u8  mac[6];		/* container (peer) MAC */
	__u8  node_mac[6];	/* host-side veth MAC */
	__u32 ipv4;		/* network byte order, 0 = none */
	__u8  ipv6[16];		/* all zero = none */
};

/* cilium_lxc key */
struct endpoint_key {
	union {
		__u32 ip4;
		__u8  ip6[16];
	};
	__u8 family;		/* 4 or 6 */
	__u8 pad[3];
};

/* cilium_policy */
struct policy_key {
	__u32 sec_identity;	/* peer identity, 0 = any */
	__u16 lxc_id;
	__u16 dport;		/* network byte order, 0 = any */
	__u8  proto;		/* 0 = any */
	__u8  direction;	/* POLICY_INGRESS / POLICY_EGRESS */
	__u8  pad[2];
};

struct policy_entry {
	__u16 proxy_port;	/* network byte order, 0 = no L7 redirect */
	__u8  deny;
	__u8  pad[5];
	__u64 packets;
	__u64 bytes;
};

/* cilium_ipcache */
struct ipcache_key {
	__u32 prefixlen;	/* 32 (pad1/pad2/family) + address prefix bits */
	__u16 pad1;
	__u8  pad2;
	__u8  family;
	union {
		__u32 ip4;
		__u8  ip6[16];
	};
};

struct remote_endpoint_info {
	__u32 sec_identity;
	__u32 tunnel_endpoint;	/* node IPv4 (network order), 0 = local/none */
	__u8  flags;
	__u8  pad[3];
};

/* cilium_tunnel_map (LPM trie): another node's allocation range -> that
 * node's IPv4 address, the outer destination of the VXLAN encapsulation.
 * prefixlen counts the bits after itself: 32 for family and pad (always
 * matched) + the range's prefix length, so a lookup of one address uses
 * 32 + 32 (IPv4) or 32 + 128 (IPv6). */
struct tunnel_map_key {
	__u32 prefixlen;
	__u8  family;		/* 4 or 6 */
	__u8  pad[3];
	union {
		__u32 ip4;
		__u8  ip6[16];
	};
};

struct tunnel_map_value {
	__u32 endpoint4;	/* node IPv4 (network order) */
	__u8  flags;		/* 0 (reserved) */
	__u8  pad[3];
};

/* cilium_ct4 / cilium_ct6 */
struct ipv4_ct_tuple {
	__u32 saddr;
	__u32 daddr;
	__u16 sport;
	__u16 dport;
	__u8  nexthdr;
	__u8  flags;		/* CT_EGRESS / CT_INGRESS */
	__u8  pad[2];
};

struct ipv6_ct_tuple {
	__u8  saddr[16];
	__u8  daddr[16];
	__u16 sport;
	__u16 dport;
	__u8  nexthdr;
	__u8  flags;
	__u8  pad[2];
};

struct ct_entry {
	__u64 packets;
	__u64 bytes;
	__u32 lifetime;		/* expiry, seconds of CLOCK_MONOTONIC */
	__u16 rev_nat_index;	/* service ID of a translated flow (lib/lb_lxc.h), 0 = none */
	__u16 flags;		/* CT_F_* */
	__u32 src_sec_id;	/* CT_SERVICE entries: the backend ID */
	__u32 last_report;
};

/* cilium_ipv4_frag_datagrams key (Cilium's layout) */
struct ipv4_frag_id {
	__u32 daddr;
	__u32 saddr;
	__u16 id;		/* network byte order */
	__u8  proto;
	__u8  pad;
};

/* cilium_ipv6_frag_datagrams key (Cilium's layout) */
struct ipv6_frag_id {
	__u32 id;		/* network byte order */
	__u8  proto;
	__u8  pad1;
	__u16 pad2;
	__u8  saddr[16];
	__u8  daddr[16];
};

/* value of both fragment maps: the first fragment's L4 "ports" and L4
 * protocol (an IPv6 datagram is keyed by the Fragment header's next header,
 * which a Destination Options header may still follow) */
struct frag_l4ports {
	__u16 sport;
	__u16 dport;
	__u8  nexthdr;
	__u8  pad[3];
};

/* cilium_ct_budget (ARRAY indexed by lxc_id) */
struct ct_budget {
	__u32 window_start;	/* seconds of CLOCK_MONOTONIC */
	__s32 count;		/* unreplied entries created in this window, less
				 * refunds (negative after a reset: refunds of
				 * entries the last window created) */
};

/* cilium_metrics (per-CPU) */
struct metrics_key {
	__u8  reason;
	__u8  dir;		/* METRIC_INGRESS / METRIC_EGRESS */
	__u16 pad;
};

struct metrics_value {
	__u64 count;
	__u64 bytes;
};

/* cilium_config (ARRAY, key 0) */
struct datapath_config {
	__u32 flags;			/* CFG_F_* */
	__u32 monitor_aggregation;	/* MONITOR_AGGREGATION_* */
	__u32 host_ifindex;		/* cilium_host: where to-container hairpins
					 * connections for the ingress proxy (0 = none) */
	__u32 tunnel_ifindex;		/* cilium_vxlan: where traffic for other
					 * nodes is encapsulated (0 = no tunnel) */
	__u16 tunnel_port;		/* its UDP port (network order): containers
					 * may not send to it (DROP_ENCAP_PROHIBITED) */
	__u16 pad2;
	__u32 node_ipv4;		/* this node's IPv4 (network order), the
					 * outer source: what the other nodes know
					 * it by (0: the kernel's choice) */
	__u64 reserved[1];
};

/* cilium_events payload header, one layout for every type (fields that do
 * not apply are 0); followed by len_cap packet bytes (0 for NOTIFY_DEBUG) */
struct notify_msg {
	__u8  type;		/* NOTIFY_* */
	__u8  subtype;		/* drop reason / trace observation point / DBG_* */
	__u16 source;		/* lxc_id of the endpoint the event is about */
	__u32 hash;
	__u32 len_orig;
	__u32 len_cap;
	__u32 src_label;
	__u32 dst_label;
	__u32 dst_id;		/* destination endpoint (lxc_id), 0 = not local */
	__u32 ifindex;
	__u8  reason;		/* trace: TRACE_REASON_* (CT state) */
	__u8  direction;	/* drop, policy verdict: METRIC_INGRESS / METRIC_EGRESS */
	__u8  match_type;	/* policy verdict: POLICY_MATCH_* */
	__u8  proto;		/* policy verdict: L4 protocol */
	__u16 dport;		/* policy verdict: destination port, host order */
	__u16 pad;
	__u32 verdict;		/* policy verdict: 0 allowed, else the drop reason */
	__u32 arg1;		/* debug arguments (DBG_*) */
	__u32 arg2;
	__u32 arg3;
};

/* Parsed packet. For IPv4 the addresses live in p32[0]. */
struct flow {
	union v6addr saddr;
	union v6addr daddr;
	__u16 sport;		/* network order; ICMP: echo id (request) */
	__u16 dport;		/* network order; ICMP: echo id (reply) */
	__u32 l4_off;
	__u8  family;		/* 4 / 6 */
	__u8  nexthdr;
	__u8  tcp_flags;
	__u8  icmp_type;
	__u8  is_echo;		/* ICMP echo: port semantics are wildcard-only */
	__u8  is_error;		/* ICMP error: inner tuple in 'inner' */
	__u8  is_nd;		/* ICMPv6 neighbour discovery */
	__u8  frag_first;	/* first fragment: record its ports once forwarded */
	__u32 frag_id;		/* IP id (IPv4) / Fragment header id (IPv6), network order */
	__u8  frag_nexthdr;	/* IPv6: the Fragment header's next header */
	__u8  frag_later;	/* a later fragment: no L4 header in this packet */
	__u8  pad2[2];
};

#define TCP_FLAG_FIN	0x01
#define TCP_FLAG_SYN	0x02
#define TCP_FLAG_RST	0x04
#define TCP_FLAG_ACK	0x10

static __always_inline __u32 bpf_now_sec(void)
{
	return (__u32)(bpf_ktime_get_ns() / 1000000000ULL);
}

#endif /* __LIB_COMMON_H_ */
