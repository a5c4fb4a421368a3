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

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, RELAY_MAX_SOCKETS);
	__type(key, __u64);
	__type(value, struct relay_flow);
} relay_flows SEC(".maps");

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

static __always_inline void count_global(__u32 which)
{
	__u64 *counter = bpf_map_lookup_elem(&relay_global_stats, &which);

	if (counter)
		*counter += 1;
}

SEC("sk_skb")
int relay_verdict(struct __sk_buff *skb)
{
	__u64 key = fixed_source ? fixed_source : bpf_get_socket_cookie(skb);
	struct relay_route_stats *stats;
	struct relay_flow *flow;
	__u64 target;
	__u32 route;

	flow = bpf_map_lookup_elem(&relay_flows, &key);
	if (!flow) {
		struct relay_new_client_tag tag = { .sender_cookie = key };

		if (!new_client_target) {
			/* Not a listener instance; user space set no flow for this
			 * socket yet. Leave it to the socket's queue. */
			count_global(RELAY_GLOBAL_UNKNOWN_SOURCE);
			return SK_PASS;
		}
		if (bpf_skb_change_head(skb, sizeof(tag), 0) ||
		    bpf_skb_store_bytes(skb, 0, &tag, sizeof(tag), 0)) {
			/* No headroom for the tag: user space could not tell who sent it. */
			count_global(RELAY_GLOBAL_TAG_FAILED);
			return SK_DROP;
		}
		target = new_client_target;
		if (bpf_sk_redirect_hash(skb, &relay_targets, &target, 0) != SK_PASS) {
			/* The listener is being torn down. */
			count_global(RELAY_GLOBAL_NEW_CLIENT_LOST);
			return SK_DROP;
		}
		return SK_PASS;
	}
	route = flow->route_id;
	stats = bpf_map_lookup_elem(&relay_route_stats, &route);
	if (!stats) {
		/* User space wrote a route id we have no counters for: a bug. */
		count_global(RELAY_GLOBAL_BAD_ROUTE);
		return SK_DROP;
	}
	flow->last_ns = bpf_ktime_get_ns();
	target = flow->target_cookie;
	if (bpf_sk_redirect_hash(skb, &relay_targets, &target,
				 (flow->flags & RELAY_FLOW_INGRESS) ? BPF_F_INGRESS : 0) != SK_PASS) {
		/* The partner left relay_targets (session torn down under us):
		 * nowhere to deliver; counted so status shows it. */
		stats->drop_no_target += 1;
		return SK_DROP;
	}
	stats->packets += 1;
	stats->bytes += skb->len;
	/* Atomic: a flow's skbs can be verdicted on several CPUs at once, and
	 * the stream half-close rule needs an exact total. */
	__sync_fetch_and_add(&flow->bytes, skb->len);
	return SK_PASS;
}

char LICENSE[] SEC("license") = "GPL";
