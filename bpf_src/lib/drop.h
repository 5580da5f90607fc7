/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Metrics and drop notifications (other monitor events: lib/trace.h). */
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

/* The fields every event type has (the rest of msg stays 0). */
static __always_inline void notify_init(struct notify_msg *msg, __u8 type, __u8 subtype,
					__u16 source, __u32 src_label, __u32 dst_label,
					__u32 dst_id)
{
	msg->type = type;
	msg->subtype = subtype;
	msg->source = source;
	msg->src_label = src_label;
	msg->dst_label = dst_label;
	msg->dst_id = dst_id;
}

/* Fill the per-packet part of msg and write it to cilium_events, followed by
 * the first NOTIFY_CAPTURE_LEN bytes of the packet if 'capture'. */
static __always_inline void notify_output(struct __sk_buff *skb, struct notify_msg *msg,
					  int capture)
{
	__u64 cap = 0;

	if (capture) {
		cap = skb->len;
		if (cap > NOTIFY_CAPTURE_LEN)
			cap = NOTIFY_CAPTURE_LEN;
	}
	msg->hash = bpf_get_hash_recalc(skb);
	msg->len_orig = skb->len;
	msg->len_cap = cap;
	msg->ifindex = skb->ifindex;
	bpf_perf_event_output(skb, &cilium_events, BPF_F_CURRENT_CPU | (cap << 32),
			      msg, sizeof(*msg));
}

/* Account and report a drop (never aggregated); returns the tc verdict to use. */
static __always_inline int send_drop_notify(struct __sk_buff *skb, __u8 reason, __u8 dir,
					    __u16 source, __u32 src_label,
					    __u32 dst_label, __u32 dst_id)
{
	struct notify_msg msg = {};

	update_metrics(reason, dir, skb->len);
	notify_init(&msg, NOTIFY_DROP, reason, source, src_label, dst_label, dst_id);
	msg.direction = dir;
	notify_output(skb, &msg, 1);
	return TC_ACT_SHOT;
}

#endif /* __LIB_DROP_H_ */
