// SPDX-License-Identifier: GPL-2.0
/*
 * The floor udp_bench.sh measures the relay against: the least a sockmap
 * redirect can do for one UDP flow. Two sockets in one SOCKMAP, this
 * program attached to it: every skb that arrives on the front socket is
 * redirected (egress) to the upstream socket, every skb that arrives on the
 * upstream socket back to the front socket. No flow table, no counters, no
 * timestamps: one context read and the redirect.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#define BARE_FRONT 0
#define BARE_UPSTREAM 1

/* The front socket's local port (host order), set before load. */
const volatile __u32 front_port = 0;

struct {
	__uint(type, BPF_MAP_TYPE_SOCKMAP);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
} bare_socks SEC(".maps");

SEC("sk_skb")
int bare_verdict(struct __sk_buff *skb)
{
	/* A failed redirect (the partner left the map) returns SK_DROP. */
	return bpf_sk_redirect_map(skb, &bare_socks,
				   skb->local_port == front_port ? BARE_UPSTREAM : BARE_FRONT, 0);
}

char LICENSE[] SEC("license") = "GPL";
