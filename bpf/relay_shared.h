/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/*
 * Key/value layouts shared by relay.bpf.c and the C++ daemon. Fixed-width
 * types and explicit padding only: both sides must agree byte for byte.
 */
#ifndef SOCKRELAY_RELAY_SHARED_H
#define SOCKRELAY_RELAY_SHARED_H

#ifdef __cplusplus
#include <cstdint>
typedef uint8_t relay_u8;
typedef uint32_t relay_u32;
typedef uint64_t relay_u64;
#else
typedef __u8 relay_u8;
typedef __u32 relay_u32;
typedef __u64 relay_u64;
#endif

/* Routes are numbered 0..RELAY_MAX_ROUTES-1 in config order. */
#define RELAY_MAX_ROUTES 256
/* Sockets in the redirect target hash; sessions use two or three each. */
#define RELAY_MAX_SOCKETS 65536

/* Targets of one route (`to = [...]`); a power of two. */
#define RELAY_MAX_TARGETS 8

/* relay_flow.balance: how a flow with several targets picks one per skb. */
#define RELAY_BALANCE_SINGLE 0	    /* always target_cookie */
#define RELAY_BALANCE_ROUND_ROBIN 1 /* targets[next++ % n_targets] */
#define RELAY_BALANCE_HASH 2	    /* targets[client_hash % n_targets] */
#define RELAY_BALANCE_BROADCAST 3   /* to user space, which copies to every target */

/* relay_flow.flags */
#define RELAY_FLOW_INGRESS (1u << 0) /* redirect with BPF_F_INGRESS */
#define RELAY_FLOW_STREAM (1u << 1)  /* a stream session: empty skbs (a TCP FIN) are dropped */
#define RELAY_FLOW_REFUSED (1u << 2) /* a sender the policy refused: dropped, counted */
/* relay_flow.bytes not kept: datagram flows, whose total nobody reads */
#define RELAY_FLOW_NO_BYTES (1u << 3)
/* A one-way route's listener: one flow for every sender, so RELAY_BALANCE_HASH
 * hashes the sender the skb shows (see one_way_hash in relay.bpf.c) */
#define RELAY_FLOW_ONE_WAY (1u << 4)
/* A flow being set up: see struct relay_hold */
#define RELAY_FLOW_HOLD (1u << 5)

/*
 * relay_flows: key = the socket cookie the verdict program sees for an skb
 * (the receiving socket for UDP/TCP/VSOCK, the *sender* for AF_UNIX, or a
 * private instance's fixed source key), value = where it goes.
 */
struct relay_flow {
	relay_u64 target_cookie; /* key into relay_targets */
	relay_u32 route_id;
	relay_u32 flags;
	relay_u64 last_ns; /* bpf_ktime_get_coarse_ns() of the last skb; for idle expiry */
	/*
	 * Payload bytes redirected for this flow, added atomically by the
	 * verdict program (not with RELAY_FLOW_NO_BYTES). A stream session
	 * compares it with what the target socket has sent before it
	 * propagates a FIN (see stream_route.h).
	 */
	relay_u64 bytes;
	relay_u32 balance;     /* RELAY_BALANCE_* */
	relay_u32 n_targets;   /* targets[] in use (0: every target is down) */
	relay_u64 next;	       /* round-robin position */
	relay_u32 client_hash; /* hash of the client's address: RELAY_BALANCE_HASH */
	/*
	 * skbs of this flow the program itself dropped after choosing the
	 * target (target-full, target gone), added atomically. The kernel
	 * counts them on the source socket too (SO_MEMINFO drops); user space
	 * subtracts them to see the drops the program did not decide: a
	 * target socket that stopped sending (DatagramRoute::kernel_stopped_sending).
	 */
	relay_u32 dropped;
	/*
	 * The targets that are up, compacted: keys into relay_targets, and
	 * each one's index in the route's `to` (for per-target counters). User
	 * space rewrites them when a target fails or comes back, so the
	 * program needs no loop to skip dead ones.
	 */
	relay_u64 targets[RELAY_MAX_TARGETS];
	relay_u8 target_index[RELAY_MAX_TARGETS];
};

/*
 * Per-target counters of routes with several targets: a per-CPU array
 * indexed by route id * RELAY_MAX_TARGETS + target index.
 */
struct relay_target_stats {
	relay_u64 packets;
	relay_u64 bytes;
	relay_u64 drop_target_full; /* the target's kernel backlog is at its bound */
};

/*
 * Prepended to a datagram from an unknown AF_UNIX sender, which the verdict
 * program redirects to the listener's "new clients" socket instead of
 * passing it up: user space learns the sender from the tag (a recv() on the
 * listener's psock queue would report no sender address, and would merge
 * datagrams).
 */
struct relay_new_client_tag {
	relay_u64 sender_cookie;
	/* The sender socket's owner (bpf_get_socket_uid: for AF_UNIX the
	 * verdict program sees the sender), for allow-uids: read here, it
	 * cannot race the sender closing its socket as a later sock_diag
	 * lookup would. */
	relay_u32 sender_uid;
	/* 1: a datagram of a held flow (struct relay_hold), counted in
	 * relay_passed; 0: a sender with no flow entry yet. */
	relay_u32 held;
};

/*
 * The hold: how a new flow's datagrams keep their order while user space
 * sets the flow up. Its entry in relay_flows carries RELAY_FLOW_HOLD, and
 * its key has an entry here (written by user space only) and one in
 * relay_passed (a u64 the verdict program adds to atomically). The verdict
 * program redirects the flow's skb to its target only when passed ==
 * forwarded; otherwise it tags it (held = 1), redirects it to `channel`
 * and adds one to passed. User space forwards, in order, what reached it
 * before the entry existed, then what the channel brings, and raises
 * forwarded as it goes: a datagram can go straight to the target only once
 * every earlier one has left.
 */
#define RELAY_HOLD_LEFTOVERS (~0ull) /* forwarded: user space still forwards what came before */
struct relay_hold {
	relay_u64 forwarded; /* held datagrams user space forwarded, or RELAY_HOLD_LEFTOVERS */
	relay_u64 channel;   /* relay_targets key of the socket held datagrams go to */
};

/* Per-route counters, a per-CPU array indexed by route id. */
struct relay_route_stats {
	relay_u64 packets;	    /* skbs redirected */
	relay_u64 bytes;	    /* their payload bytes */
	relay_u64 drop_no_target;   /* redirect failed: the target socket is gone */
	relay_u64 drop_policy;	    /* from a sender the route's policy refused */
	relay_u64 drop_target_full; /* the target's kernel backlog is at its bound */
};

/*
 * source_filter.bpf.c (allow-sources): an LPM trie key. IPv4 networks are
 * stored v4-mapped (::ffff:a.b.c.d, prefix + 96), so one trie holds both.
 */
#define RELAY_MAX_SOURCE_NETWORKS 1024
struct relay_source_network {
	relay_u32 prefixlen;
	relay_u8 address[16];
};

/* Counters not tied to a route, a per-CPU array indexed by enum. */
enum relay_global_counter {
	RELAY_GLOBAL_UNKNOWN_SOURCE = 0,   /* no flow and no new-client socket: passed up */
	RELAY_GLOBAL_BAD_ROUTE = 1,	   /* flow names a route id out of range: dropped */
	RELAY_GLOBAL_TAG_FAILED = 2,	   /* could not prepend the new-client tag: dropped */
	RELAY_GLOBAL_NEW_CLIENT_LOST = 3,  /* the new-client socket is gone: dropped */
	RELAY_GLOBAL_ALL_TARGETS_DOWN = 4, /* balanced flow with every target down: dropped */
	RELAY_GLOBAL_MAX = 5,
};

/*
 * The bound on what the kernel holds toward one target (route key
 * `target-buffer`): the skbs waiting in the target socket's psock backlog
 * (`ingress_skb`), counted by truesize (kernel memory, not payload).
 * relay_route_limits, an array indexed by route id, holds each route's
 * bound; 0 there means RELAY_DEFAULT_TARGET_BUFFER.
 */
#define RELAY_DEFAULT_TARGET_BUFFER (4u << 20)
struct relay_route_limit {
	relay_u32 target_buffer; /* bytes of truesize; 0: the default */
	relay_u32 _pad;
};

#endif
