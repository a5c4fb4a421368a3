/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The bound on what the kernel holds toward one target (route key
 * `target-buffer`), included by relay.bpf.c.
 *
 * A redirected skb waits in the target socket's psock backlog
 * (`ingress_skb`) until the psock worker has sent it on (egress) or queued
 * it on the target's receive side (BPF_F_INGRESS). That backlog is charged
 * to no socket and no memory cgroup: behind a target that stops reading it
 * grows without limit (ARCHITECTURE.md, "Kernel facts"). The verdict program
 * bounds it itself, per skb, so the bound holds at any flood rate:
 *
 *  - every skb redirected to a target is stamped (in skb->priority, which
 *    an SK_SKB program may write and nothing after the redirect reads) with
 *    the target's running total of truesize redirected before it, taken
 *    with one atomic add from relay_target_backlog;
 *  - the bytes waiting are that running total minus the stamp of the
 *    backlog's oldest skb, read through BTF from the target's psock;
 *  - beyond the route's bound the skb is dropped and counted target-full.
 *    An empty backlog always takes the skb: the route recovers by itself
 *    as soon as the target reads again.
 *
 * Reading kernel structs needs bpf_cast_to_kern_ctx and bpf_rdonly_cast
 * (kernel 6.2+) and CAP_PERFMON at load. The loader builds this file twice:
 * without RELAY_TARGET_BOUND the check compiles to nothing, for kernels or
 * privileges that cannot load it (status says "target-buffer not enforced").
 */
#ifndef SOCKRELAY_TARGET_BOUND_H
#define SOCKRELAY_TARGET_BOUND_H

#include <bpf/bpf_core_read.h>

#include "relay_shared.h"

/* Each route's bound, written by user space when the route starts. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, RELAY_MAX_ROUTES);
	__type(key, __u32);
	__type(value, struct relay_route_limit);
} relay_route_limits SEC(".maps");

/*
 * Per target (its relay_targets key): the running total of truesize
 * redirected to it; user space deletes a target's entry when the target
 * leaves. Sized like relay_targets at load (bpf_loader/map_sizes.h), so it
 * cannot fill; not preallocated (an LRU map would be, ~80 bytes an entry
 * at load whatever the number of targets). Were it full, the skb passes
 * unbounded rather than dropped.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, RELAY_MAX_SOCKETS);
	__type(key, __u64);
	__type(value, __u64);
} relay_target_backlog SEC(".maps");

#ifdef RELAY_TARGET_BOUND

/* The kernel structs read, with only the fields used: CO-RE relocates
 * each field to the running kernel's offset. */
struct sk_buff___relay {
	unsigned long _sk_redir; /* target sock | BPF_F_INGRESS, set by the redirect */
	unsigned int truesize;
	__u32 priority;
} __attribute__((preserve_access_index));

struct sock___relay {
	void *sk_user_data; /* the psock, with flag bits below bit 3 */
} __attribute__((preserve_access_index));

struct sk_buff_head___relay {
	struct sk_buff___relay *next;
	__u32 qlen;
} __attribute__((preserve_access_index));

struct sk_psock___relay {
	struct sk_buff_head___relay ingress_skb;
} __attribute__((preserve_access_index));

extern void *bpf_cast_to_kern_ctx(void *obj) __ksym;
extern void *bpf_rdonly_cast(const void *obj, __u32 btf_id) __ksym;

/* Flag bits below the pointers: skb->_sk_redir (BPF_F_INGRESS,
 * strparser) and sk->sk_user_data (NOCOPY, BPF, PSOCK). */
#define RELAY_REDIR_FLAGS 3ul
#define RELAY_USER_DATA_FLAGS 7ul

/* Bytes (truesize) waiting in the backlog of the socket the skb was just
 * redirected to, given the target's running total. */
static __always_inline __u32 backlog_bytes(struct sk_buff___relay *kskb, __u64 total)
{
	struct sock___relay *sk;
	struct sk_psock___relay *psock;
	struct sk_buff___relay *head;
	unsigned long user_data;
	__u32 stamp;

	sk = bpf_rdonly_cast((void *)(kskb->_sk_redir & ~RELAY_REDIR_FLAGS),
			     bpf_core_type_id_kernel(struct sock___relay));
	user_data = (unsigned long)sk->sk_user_data & ~RELAY_USER_DATA_FLAGS;
	psock =
	    bpf_rdonly_cast((void *)user_data, bpf_core_type_id_kernel(struct sk_psock___relay));
	if (!psock || psock->ingress_skb.qlen == 0)
		return 0;
	/* Unlocked: the worker may free the head between the two reads (a
	 * read of freed memory returns what is there, never faults). Read
	 * again if the head moved; a wrong answer costs one skb's decision. */
	head = psock->ingress_skb.next;
	stamp = head->priority;
	if (psock->ingress_skb.next != head)
		stamp = psock->ingress_skb.next->priority;
	return (__u32)total - stamp;
}

static __always_inline void count_target_full(struct relay_route_stats *stats, int target_slot)
{
	struct relay_target_stats *ts;
	__u32 slot = target_slot;

	stats->drop_target_full += 1;
	if (target_slot < 0)
		return;
	ts = bpf_map_lookup_elem(&relay_target_stats, &slot);
	if (ts)
		ts->drop_target_full += 1;
}

/*
 * SK_PASS to keep the skb just redirected to `target`, SK_DROP when the
 * target's backlog is at the route's bound. `target_slot` indexes
 * relay_target_stats, or is negative for a route with one target.
 */
static __always_inline int bound_target(struct __sk_buff *skb, const struct relay_flow *flow,
					__u64 target, __u32 route, struct relay_route_stats *stats,
					int target_slot)
{
	struct sk_buff___relay *kskb;
	struct relay_route_limit *limit = bpf_map_lookup_elem(&relay_route_limits, &route);
	__u32 bound =
	    limit && limit->target_buffer ? limit->target_buffer : RELAY_DEFAULT_TARGET_BUFFER;
	__u64 zero = 0, *total, stamp, waiting;
	__u32 size;

	/* A stream's bytes must not be dropped: the opt-in tcp kernel path
	 * stays unbounded (ARCHITECTURE.md, "Kernel facts"). */
	if (flow->flags & RELAY_FLOW_STREAM)
		return SK_PASS;
	kskb = bpf_cast_to_kern_ctx(skb);
	size = kskb->truesize;
	total = bpf_map_lookup_elem(&relay_target_backlog, &target);
	if (!total) {
		bpf_map_update_elem(&relay_target_backlog, &target, &zero, BPF_NOEXIST);
		total = bpf_map_lookup_elem(&relay_target_backlog, &target);
		if (!total)
			return SK_PASS; /* the map is full: see relay_target_backlog */
	}
	waiting = backlog_bytes(kskb, *total);
	if (waiting != 0 && waiting + size > bound) {
		/* The target has not taken what it was given: the kernel
		 * would hold this skb for it, charged to no one. */
		count_target_full(stats, target_slot);
		return SK_DROP;
	}
	stamp = __sync_fetch_and_add(total, size);
	skb->priority = (__u32)stamp;
	return SK_PASS;
}

#else

static __always_inline int bound_target(struct __sk_buff *skb, const struct relay_flow *flow,
					__u64 target, __u32 route, struct relay_route_stats *stats,
					int target_slot)
{
	return SK_PASS;
}

#endif /* RELAY_TARGET_BOUND */

#endif
