/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Monitor events other than drops (lib/drop.h): traces of forwarded packets,
 * policy verdicts of new connections and debug messages, all written to
 * cilium_events as a struct notify_msg.
 *
 * Traces are aggregated by datapath_config.monitor_aggregation (Cilium's
 * --monitor-aggregation, read from cilium_config on every packet so that the
 * agent changes it without reloading): see MONITOR_AGGREGATION_* in common.h.
 * At medium and above a packet of a tracked connection is traced only when
 * conntrack says there is something new (ct_lookup's 'monitor' bits), so the
 * common case, an established packet, costs one array lookup and no event.
 * Policy verdicts are emitted once per new connection and direction whose
 * policy is enforced; debug messages only with CFG_F_DEBUG. */
#ifndef __LIB_TRACE_H_
#define __LIB_TRACE_H_

#include "common.h"
#include "maps.h"
#include "l4.h"
#include "drop.h"
#include "conntrack.h"

static __always_inline __u32 monitor_aggregation(void)
{
	__u32 zero = 0;
	struct datapath_config *cfg = bpf_map_lookup_elem(&cilium_config, &zero);

	return cfg ? cfg->monitor_aggregation : MONITOR_AGGREGATION_NONE;
}

/* Whether a packet in connection state 'ct' seen at 'obs_point' is traced;
 * 'monitor' is ct_lookup's CT_MONITOR_* bits for it. */
static __always_inline int trace_wanted(__u8 obs_point, int ct, __u8 monitor)
{
	__u32 level = monitor_aggregation();

	if (level == MONITOR_AGGREGATION_NONE)
		return 1;
	if (obs_point == TRACE_FROM_LXC || obs_point == TRACE_FROM_OVERLAY)
		return 0;	/* receive-side traces: only without aggregation */
	if (level < MONITOR_AGGREGATION_MEDIUM)
		return 1;
	if (ct == CT_NEW || ct == CT_RELATED)
		return 1;
	if (level >= MONITOR_AGGREGATION_MAX)
		return monitor & CT_MONITOR_STATE;
	return monitor;
}

/* A forwarded packet. 'ct' is its CT_* state (= TRACE_REASON_*). */
static __always_inline void send_trace_notify(struct __sk_buff *skb, __u8 obs_point,
					      __u16 source, __u32 src_label,
					      __u32 dst_label, __u32 dst_id, int ct,
					      __u8 monitor)
{
	struct notify_msg msg = {};

	if (!trace_wanted(obs_point, ct, monitor))
		return;
	notify_init(&msg, NOTIFY_TRACE, obs_point, source, src_label, dst_label, dst_id);
	msg.reason = ct;
	notify_output(skb, &msg, 1);
}

/* The policy decision on a new connection: 'source' is the endpoint whose
 * policy decided, 'dir' METRIC_INGRESS / METRIC_EGRESS, 'verdict' 0 or the
 * drop reason, 'match' the POLICY_MATCH_* of the deciding entry. */
static __always_inline void send_policy_verdict_notify(struct __sk_buff *skb, const struct flow *f,
						       __u16 source, __u32 src_label,
						       __u32 dst_label, __u32 dst_id, __u8 dir,
						       int verdict, __u8 match)
{
	struct notify_msg msg = {};

	notify_init(&msg, NOTIFY_POLICY_VERDICT, 0, source, src_label, dst_label, dst_id);
	msg.direction = dir;
	msg.match_type = match;
	msg.verdict = verdict;
	msg.proto = f->nexthdr;
	if (flow_is_l4_ports(f))
		msg.dport = bpf_ntohs(f->dport);
	notify_output(skb, &msg, 1);
}

static __always_inline int debug_enabled(void)
{
	return config_flags() & CFG_F_DEBUG;
}

/* A debug message (DBG_*), no packet bytes; only with CFG_F_DEBUG. */
static __always_inline void send_debug(struct __sk_buff *skb, __u16 source, __u8 type,
				       __u32 arg1, __u32 arg2, __u32 arg3)
{
	struct notify_msg msg = {};

	if (!debug_enabled())
		return;
	notify_init(&msg, NOTIFY_DEBUG, type, source, 0, 0, 0);
	msg.arg1 = arg1;
	msg.arg2 = arg2;
	msg.arg3 = arg3;
	notify_output(skb, &msg, 0);
}

/* The conntrack lookup of f in direction dir and its result, as Cilium's
 * "Conntrack lookup 1/2, 2/2" and "CT verdict" debug messages. */
static __always_inline void debug_ct_lookup(struct __sk_buff *skb, const struct flow *f,
					    __u16 source, __u8 dir, int ct)
{
	__u32 ports = (__u32)bpf_ntohs(f->sport) << 16 | bpf_ntohs(f->dport);

	if (!debug_enabled())
		return;
	if (f->family == 4) {
		send_debug(skb, source, DBG_CT_LOOKUP4_1, f->saddr.p32[0], f->daddr.p32[0], ports);
		send_debug(skb, source, DBG_CT_LOOKUP4_2, (__u32)f->nexthdr << 8 | dir, 0, 0);
	} else {
		send_debug(skb, source, DBG_CT_LOOKUP6_1, f->saddr.p32[3], f->daddr.p32[3], ports);
		send_debug(skb, source, DBG_CT_LOOKUP6_2, (__u32)f->nexthdr << 8 | dir, 0, 0);
	}
	send_debug(skb, source, DBG_CT_VERDICT, ct, 0, 0);
}

static __always_inline void debug_ct_created(struct __sk_buff *skb, const struct flow *f,
					     __u16 source, __u32 src_label)
{
	send_debug(skb, source, f->family == 4 ? DBG_CT_CREATED4 : DBG_CT_CREATED6, 0,
		   src_label, 0);
}

#endif /* __LIB_TRACE_H_ */
