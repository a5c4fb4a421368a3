// SPDX-License-Identifier: GPL-2.0
/*
 * allow-sources for a udp listener: a socket filter that drops, before it
 * is queued, every datagram whose source address is in none of the route's
 * networks, and counts it. One instance per listener.
 *
 * Why not the verdict program: the listener is not in a sockmap (each
 * client gets a flow socket of its own), and an SK_SKB program sees the
 * socket's addresses, not the packet's. A socket filter sees the packet's
 * network header.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "relay_shared.h"

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, RELAY_MAX_SOURCE_NETWORKS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct relay_source_network);
	__type(value, __u8);
} allowed SEC(".maps");

/* [0]: datagrams dropped (source not allowed). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} filter_drops SEC(".maps");

SEC("socket")
int source_filter(struct __sk_buff *skb)
{
	struct relay_source_network key = {.prefixlen = 128};
	__u32 zero = 0;
	__u64 *drops;
	__u8 first;

	if (bpf_skb_load_bytes_relative(skb, 0, &first, 1, BPF_HDR_START_NET))
		goto drop;
	if ((first >> 4) == 4) {
		/* IPv4 as v4-mapped IPv6, so one trie holds both families. */
		key.address[10] = 0xff;
		key.address[11] = 0xff;
		if (bpf_skb_load_bytes_relative(skb, 12, &key.address[12], 4, BPF_HDR_START_NET))
			goto drop;
	} else if ((first >> 4) == 6) {
		if (bpf_skb_load_bytes_relative(skb, 8, key.address, 16, BPF_HDR_START_NET))
			goto drop;
	} else {
		goto drop;
	}
	if (bpf_map_lookup_elem(&allowed, &key))
		return skb->len;
drop:
	drops = bpf_map_lookup_elem(&filter_drops, &zero);
	if (drops)
		*drops += 1;
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
