/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Metrics, drop notifications and (optional) trace notifications. */
#ifndef __LIB_DROP_H_
#define __LIB_DROP_H_

#include "common.h"
#include "maps.h"

static __always_inline void update_metrics(__u8 reason, __u8 dir, __u32 len)
{
	struct metrics_key key = {};
	struct metrics_value *val, init = {};

	key.reason = reason;
	key.dir = dir;
	val = bpf_map_lookup_elem(&cilium_metrics, &key);
	if (likely(val)) {
		/* per-CPU value: no atomics needed */
		val->count += 1;
		val->bytes += len;
	} else {
		init.count = 1;
		init.bytes = len;
		bpf_map_update_elem(&cilium_metrics, &key, &init, BPF_ANY);
	}
}

static __always_inline void send_notify(struct __sk_buff *skb, __u8 type, __u8 subtype,
					__u16 source, __u32 src_label, __u32 dst_label,
					__u32 dst_id)
{
	struct notify_msg msg = {};
	__u64 cap = skb->len;

	if (cap > NOTIFY_CAPTURE_LEN)
		cap = NOTIFY_CAPTURE_LEN;
	msg.type = type;
	msg.subtype = subtype;
	msg.source = source;
	msg.hash = bpf_get_hash_recalc(skb);
	msg.len_orig = skb->len;
	msg.len_cap = cap;
	msg.src_label = src_label;
	msg.dst_label = dst_label;
	msg.dst_id = dst_id;
	msg.ifindex = skb->ifindex;
	bpf_perf_event_output(skb, &cilium_events, BPF_F_CURRENT_CPU | (cap << 32),
			      &msg, sizeof(msg));
}

/* Account and report a drop; returns the tc verdict to use. */
static __always_inline int send_drop_notify(struct __sk_buff *skb, __u8 reason, __u8 dir,
					    __u16 source, __u32 src_label,
					    __u32 dst_label, __u32 dst_id)
{
	update_metrics(reason, dir, skb->len);
	send_notify(skb, NOTIFY_DROP, reason, source, src_label, dst_label, dst_id);
	return TC_ACT_SHOT;
}

static __always_inline void send_trace_notify(struct __sk_buff *skb, __u8 obs_point,
					      __u16 source, __u32 src_label,
					      __u32 dst_label, __u32 dst_id)
{
	if (config_flags() & CFG_F_TRACE)
		send_notify(skb, NOTIFY_TRACE, obs_point, source, src_label,
			    dst_label, dst_id);
}

#endif /* __LIB_DROP_H_ */
