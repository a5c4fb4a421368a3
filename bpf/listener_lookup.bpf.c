// SPDX-License-Identifier: GPL-2.0
/*
 * A UDP listener of a kernel route keeps every datagram sent to its address
 * that no connected socket takes (an SK_LOOKUP program, attached to the
 * network namespace; one instance per listener).
 *
 * Why: a new client's flow socket is bound to the listener's address a
 * moment before it is connected to its client. In that moment the kernel's
 * UDP lookup finds it (the newest of equal unconnected sockets wins, and a
 * socket bound to an address wins over a wildcard listener), so it catches
 * other new clients' datagrams, which can then no longer be put back in
 * their order. The lookup runs this program after it looked for a
 * connected socket and before it looks at unconnected ones, so a client
 * whose flow socket is connected still reaches it, and every other
 * datagram to the listener's address reaches the listener.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_UDP 17

/* The listener's bound address, as getsockname() gives it. */
const volatile __u32 listen_family = 0;
const volatile __u32 listen_port = 0;	  /* host byte order, like ctx->local_port */
const volatile __u32 listen_addr[4] = {}; /* network byte order; IPv4 in [0] */
const volatile __u32 listen_wildcard = 0; /* 0.0.0.0 or [::] */

/* The listener, at key 0. */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKMAP);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} listener SEC(".maps");

/* What the program needs of its context, read field by field. */
struct lookup_to {
	__u32 family, protocol, port;
	__u32 ip[4]; /* IPv4 in [0] */
};

/* Is the datagram's destination the listener's address? */
static __always_inline int to_listener(const struct lookup_to *to)
{
	if (to->protocol != IPPROTO_UDP || to->port != listen_port)
		return 0;
	if (to->family == AF_INET) {
		if (listen_family == AF_INET)
			return listen_wildcard || to->ip[0] == listen_addr[0];
		/* An IPv6 listener takes IPv4 on [::] or ::ffff:a.b.c.d
		 * (if it is IPV6_V6ONLY, the assignment below fails). */
		return listen_wildcard || (listen_addr[0] == 0 && listen_addr[1] == 0 &&
					   listen_addr[2] == bpf_htonl(0xffff) && to->ip[0] == listen_addr[3]);
	}
	if (to->family != AF_INET6 || listen_family != AF_INET6)
		return 0;
	return listen_wildcard || (to->ip[0] == listen_addr[0] && to->ip[1] == listen_addr[1] &&
				   to->ip[2] == listen_addr[2] && to->ip[3] == listen_addr[3]);
}

SEC("sk_lookup")
int relay_listener_lookup(struct bpf_sk_lookup *ctx)
{
	struct lookup_to to = {};
	__u32 zero = 0;
	struct bpf_sock *sk;

	__u32 ip4 = ctx->local_ip4, ip6_0 = ctx->local_ip6[0];

	/* Both loaded before one is chosen: a choice between two ctx
	 * addresses would be one load through a ctx pointer + offset. */
	asm volatile("" : "+r"(ip4), "+r"(ip6_0));
	to.family = ctx->family;
	to.protocol = ctx->protocol;
	to.port = ctx->local_port;
	to.ip[0] = to.family == AF_INET ? ip4 : ip6_0;
	to.ip[1] = ctx->local_ip6[1];
	to.ip[2] = ctx->local_ip6[2];
	to.ip[3] = ctx->local_ip6[3];
	if (!to_listener(&to))
		return SK_PASS;
	sk = bpf_map_lookup_elem(&listener, &zero);
	if (!sk)
		return SK_PASS;
	/* On failure the kernel's own lookup goes on, as without us. */
	bpf_sk_assign(ctx, sk, 0);
	bpf_sk_release(sk);
	return SK_PASS;
}

char LICENSE[] SEC("license") = "GPL";
