// SPDX-License-Identifier: GPL-2.0
/*
 * The relay's data path: one SK_SKB verdict program. Every skb that arrives
 * on a relayed socket is looked up by socket cookie in relay_flows and
 * redirected to the flow's partner in relay_targets.
 *
 * Two kinds of map hold the sockets:
 *  - relay_sources (SOCKHASH, this program attached): sockets whose skbs we
 *    steer. A socket can carry one verdict program only, so a socket that
 *    needs its own program instance (see fixed_source) is not in here.
 *  - relay_targets (SOCKHASH, no program): every socket we may redirect to.
 *    Having no program, it never conflicts with a socket's verdict program.
 *
 * Nothing is passed up to the socket's own (psock) queue on purpose: a
 * recv() there merges datagrams and reports no sender.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "relay_shared.h"

/*
 * Non-zero in a private instance: the key of the one socket it serves.
 * AF_UNIX shows the verdict program the sender, so a unix-dgram socket whose
 * sender (one server) also talks to other relay sockets cannot be told
 * apart by cookie; such a socket gets an instance of its own with this set.
 */
const volatile __u64 fixed_source = 0;

/*
 * Non-zero in an AF_UNIX listener's instance: the relay_targets key of its
 * "new clients" socket. A datagram from a sender with no flow yet is tagged
 * with the sender's cookie and redirected there, so user space reads it
 * with its boundaries and its sender intact.
 */
const volatile __u64 new_client_target = 0;

struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, RELAY_MAX_SOCKETS);
	__type(key, __u64);
	__type(value, __u64);
} relay_sources SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, RELAY_MAX_SOCKETS);
	__type(key, __u64);
	__type(value, __u64);
} relay_targets SEC(".maps");

/* A private instance's own map: its one socket at key 0. */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKMAP);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} relay_private SEC(".maps");

/* Sized from the config at load (bpf_loader/map_sizes.h); elements are
 * allocated as user space inserts them, not all at load (max-sessions may
 * ask for millions). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, RELAY_MAX_SOCKETS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u64);
	__type(value, struct relay_flow);
} relay_flows SEC(".maps");

/* The hold of flows being set up (relay_shared.h, struct relay_hold):
 * written by user space only... Sized like relay_flows, not preallocated:
 * an entry lives only while its flow is set up. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, RELAY_MAX_SOCKETS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u64);
	__type(value, struct relay_hold);
} relay_hold SEC(".maps");

/* ...and what the verdict program passed up, added to by it alone. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, RELAY_MAX_SOCKETS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u64);
	__type(value, __u64);
} relay_passed SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, RELAY_MAX_ROUTES);
	__type(key, __u32);
	__type(value, struct relay_route_stats);
} relay_route_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, RELAY_GLOBAL_MAX);
	__type(key, __u32);
	__type(value, __u64);
} relay_global_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, RELAY_MAX_ROUTES *RELAY_MAX_TARGETS);
	__type(key, __u32);
	__type(value, struct relay_target_stats);
} relay_target_stats SEC(".maps");

#include "target_bound.h"

static __always_inline void count_global(__u32 which)
{
	__u64 *counter = bpf_map_lookup_elem(&relay_global_stats, &which);

	if (counter)
		*counter += 1;
}

/*
 * Hands an skb to user space whole and with its flow's key: tagged with
 * the key (an AF_UNIX sender's cookie) and redirected to `channel`, a
 * socket user space reads (the socket's own queue would merge datagrams
 * and lose the sender).
 */
static __always_inline int tag_to_channel(struct __sk_buff *skb, __u64 sender, __u64 channel, __u32 held)
{
	struct relay_new_client_tag tag = {
		.sender_cookie = sender, .sender_uid = bpf_get_socket_uid(skb), .held = held};
	__u64 target = channel;

	if (bpf_skb_change_head(skb, sizeof(tag), 0) ||
	    bpf_skb_store_bytes(skb, 0, &tag, sizeof(tag), 0)) {
		/* No headroom for the tag: user space could not tell who sent it. */
		count_global(RELAY_GLOBAL_TAG_FAILED);
		return SK_DROP;
	}
	if (bpf_sk_redirect_hash(skb, &relay_targets, &target, 0) != SK_PASS) {
		/* The listener is being torn down. */
		count_global(RELAY_GLOBAL_NEW_CLIENT_LOST);
		return SK_DROP;
	}
	return SK_PASS;
}

/*
 * The hash balance = "hash" picks a target by. A client's own flow carries
 * its address's hash; a one-way listener's flow serves every sender, so the
 * hash is the sender's socket cookie, which the program sees for AF_UNIX
 * only (user space runs a udp one-way route with hash itself).
 */
static __always_inline __u32 balance_hash(struct __sk_buff *skb, const struct relay_flow *flow)
{
	__u64 sender;

	if (!(flow->flags & RELAY_FLOW_ONE_WAY))
		return flow->client_hash;
	sender = bpf_get_socket_cookie(skb);
	return (__u32)(sender ^ (sender >> 32));
}

/* An AF_UNIX listener's skb from a sender with no flow: to the listener's
 * new-client socket. */
static __always_inline int to_user_space(struct __sk_buff *skb, __u64 sender)
{
	return tag_to_channel(skb, sender, new_client_target, 0);
}

/*
 * A flow being set up (RELAY_FLOW_HOLD): while user space has not
 * forwarded every skb passed up before this one, this one is passed up
 * too, after them, and counted. Returns -1 when it may go straight to its
 * target.
 *
 * The channel's psock backlog is charged to no socket, as a target's is:
 * a flood into a held flow whose target had stalled (user space could not
 * keep up) took 1.1 GiB in 3 s (TargetBound, udp -> unix-dgram). It is
 * bounded the same way, by the route's target-buffer, and what it cannot
 * take is dropped and counted target-full.
 */
static __always_inline int hold_verdict(struct __sk_buff *skb, __u64 key, struct relay_flow *flow,
					__u32 route, struct relay_route_stats *stats)
{
	__u64 *passed = bpf_map_lookup_elem(&relay_passed, &key);
	struct relay_hold *hold;
	__u64 before;

	if (!passed)
		return -1;
	/*
	 * Counted first, compared after: user space ends the hold once it
	 * reads passed == forwarded, and an skb counted after that read
	 * would go up behind datagrams already sent straight on (one
	 * reordered). Counted first, either user space sees it and waits
	 * for it, or this run sees the forwarded count user space wrote
	 * before its read, takes its count back and goes straight on: every
	 * datagram passed up before it has left by then. The hold is looked
	 * up after the count: an update replaces the element, so one looked
	 * up before could hold a stale count.
	 */
	before = __sync_fetch_and_add(passed, 1);
	hold = bpf_map_lookup_elem(&relay_hold, &key);
	if (!hold || before == hold->forwarded) {
		__sync_fetch_and_sub(passed, 1);
		return -1;
	}
	if (tag_to_channel(skb, key, hold->channel, 1) != SK_PASS) {
		__sync_fetch_and_sub(passed, 1);
		return SK_DROP;
	}
	if (bound_target(skb, flow, hold->channel, route, stats, -1) != SK_PASS) {
		__sync_fetch_and_sub(passed, 1);
		__sync_fetch_and_add(&flow->dropped, 1);
		return SK_DROP;
	}
	/* Counted before the verdict returns (the redirect only names the
	 * socket; the skb is queued after): user space cannot read this skb
	 * before it sees it counted. */
	return SK_PASS;
}

SEC("sk_skb")
int relay_verdict(struct __sk_buff *skb)
{
	__u64 key = fixed_source ? fixed_source : bpf_get_socket_cookie(skb);
	struct relay_route_stats *stats;
	struct relay_flow *flow;
	__u32 target_index;
	__u64 target;
	__u32 route;

	flow = bpf_map_lookup_elem(&relay_flows, &key);
	if (!flow) {
		if (!new_client_target) {
			/* Not a listener instance; user space set no flow for this
			 * socket yet. Leave it to the socket's queue. */
			count_global(RELAY_GLOBAL_UNKNOWN_SOURCE);
			return SK_PASS;
		}
		return to_user_space(skb, key);
	}
	route = flow->route_id;
	stats = bpf_map_lookup_elem(&relay_route_stats, &route);
	if (!stats) {
		/* User space wrote a route id we have no counters for: a bug. */
		count_global(RELAY_GLOBAL_BAD_ROUTE);
		return SK_DROP;
	}
	if (skb->len == 0 && (flow->flags & RELAY_FLOW_STREAM)) {
		/* A TCP FIN reaches the verdict as an empty skb. Redirected, the
		 * target's psock backlog sends 0 bytes, takes that for a hard
		 * error (EPIPE) and stops transmitting. User space propagates
		 * the FIN itself, after the data: nothing to carry here. */
		return SK_DROP;
	}
	/* For idle expiry only (seconds): the coarse clock reads no time
	 * source per skb (measured: read_tsc was 0.3 % of a flat-out UDP
	 * run); same epoch as CLOCK_MONOTONIC. */
	flow->last_ns = bpf_ktime_get_coarse_ns();
	if (flow->flags & RELAY_FLOW_REFUSED) {
		/* User space refused this sender once (allow-uids): its later
		 * datagrams stop here instead of each visiting user space. */
		stats->drop_policy += 1;
		return SK_DROP;
	}
	if (flow->flags & RELAY_FLOW_HOLD) {
		int verdict = hold_verdict(skb, key, flow, route, stats);

		if (verdict >= 0)
			return verdict;
	}
	if (flow->balance == RELAY_BALANCE_BROADCAST && new_client_target) {
		/* One skb can be redirected to one socket only: user space
		 * copies it to every target. The channel's backlog is bounded
		 * as a target's is (see hold_verdict()). */
		__u32 len = skb->len;

		if (to_user_space(skb, key) != SK_PASS)
			return SK_DROP;
		if (bound_target(skb, flow, new_client_target, route, stats, -1) != SK_PASS) {
			__sync_fetch_and_add(&flow->dropped, 1);
			return SK_DROP;
		}
		stats->packets += 1;
		stats->bytes += len;
		return SK_PASS;
	}
	target = flow->target_cookie;
	target_index = 0;
	if (flow->balance == RELAY_BALANCE_ROUND_ROBIN || flow->balance == RELAY_BALANCE_HASH) {
		/* The hash of the client's address is fixed per flow, so a
		 * client sticks to one target while the set of live targets
		 * stays the same. */
		__u32 first = flow->balance == RELAY_BALANCE_HASH
				  ? balance_hash(skb, flow)
				  : (__u32)__sync_fetch_and_add(&flow->next, 1);
		__u32 n = flow->n_targets;
		__u32 slot;

		if (n == 0 || n > RELAY_MAX_TARGETS) {
			/* Every target failed and waits for its retry. */
			count_global(RELAY_GLOBAL_ALL_TARGETS_DOWN);
			stats->drop_no_target += 1;
			return SK_DROP;
		}
		slot = first % n;
		/* clang knows slot < n <= 8 and would drop the mask; the
		 * verifier does not know it and needs it. */
		asm volatile("" : "+r"(slot));
		slot &= RELAY_MAX_TARGETS - 1;
		target = flow->targets[slot];
		target_index = flow->target_index[slot] & (RELAY_MAX_TARGETS - 1);
	}
	if (bpf_sk_redirect_hash(skb, &relay_targets, &target,
				 (flow->flags & RELAY_FLOW_INGRESS) ? BPF_F_INGRESS : 0) !=
	    SK_PASS) {
		/* The partner left relay_targets (session torn down under us):
		 * nowhere to deliver; counted so status shows it. */
		stats->drop_no_target += 1;
		__sync_fetch_and_add(&flow->dropped, 1);
		return SK_DROP;
	}
	if (bound_target(skb, flow, target, route, stats,
			 flow->balance == RELAY_BALANCE_SINGLE ? -1 : (int)(route * RELAY_MAX_TARGETS + target_index)) !=
	    SK_PASS) {
		/* The target's backlog is full: counted target-full. */
		__sync_fetch_and_add(&flow->dropped, 1);
		return SK_DROP;
	}
	if (flow->balance != RELAY_BALANCE_SINGLE) {
		__u32 slot = route * RELAY_MAX_TARGETS + target_index;
		struct relay_target_stats *ts = bpf_map_lookup_elem(&relay_target_stats, &slot);

		if (ts) {
			ts->packets += 1;
			ts->bytes += skb->len;
		}
	}
	stats->packets += 1;
	stats->bytes += skb->len;
	/* Atomic: a flow's skbs can be verdicted on several CPUs at once, and
	 * the stream half-close rule needs an exact total. Datagram flows
	 * skip the locked add: nobody reads their total. */
	if (!(flow->flags & RELAY_FLOW_NO_BYTES))
		__sync_fetch_and_add(&flow->bytes, skb->len);
	return SK_PASS;
}

char LICENSE[] SEC("license") = "GPL";
