// One client of a datagram route (a flow) and its sockets: private to the
// datagram route's source files (datagram_route.cpp, datagram_flow_setup.cpp,
// datagram_forwarding.cpp, datagram_targets.cpp).
#pragma once

#include <linux/sock_diag.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <list>
#include <string>
#include <vector>

#include "common/socket_drops.h"
#include "config/address.h"
#include "relay_shared.h"
#include "sessions/datagram_route.h"

namespace sockrelay {

// A UNIX client that never bound has no address: nothing can reply to it.
inline bool has_reply_address(const sockaddr_storage& peer, socklen_t len) {
  return peer.ss_family != AF_UNIX || len > offsetof(sockaddr_un, sun_path);
}

// Counts one more refusal or drop; true for the first and every 1000th
// after it, the ones worth a log line (a flood must not flood the log).
inline bool count_and_log_now(uint64_t& counter) { return counter++ % 1000 == 0; }

// 0.0.0.0 or [::]: the listener takes datagrams sent to any local address.
inline bool wildcard_inet(const sockaddr_storage& a) {
  if (a.ss_family == AF_INET)
    return reinterpret_cast<const sockaddr_in&>(a).sin_addr.s_addr == htonl(INADDR_ANY);
  return a.ss_family == AF_INET6 &&
         IN6_IS_ADDR_UNSPECIFIED(&reinterpret_cast<const sockaddr_in6&>(a).sin6_addr);
}

// The port of an AF_INET/AF_INET6 address, in network byte order.
inline uint16_t& inet_port(sockaddr_storage& a) {
  return a.ss_family == AF_INET ? reinterpret_cast<sockaddr_in&>(a).sin_port
                                : reinterpret_cast<sockaddr_in6&>(a).sin6_port;
}

inline std::string address_bytes(const sockaddr_storage& peer, socklen_t len) {
  return std::string(reinterpret_cast<const char*>(&peer), len);
}

struct DatagramRoute::Upstream {
  Fd fd;                    // connected to the target; closed while the target is down
  uint64_t cookie = 0;      // its socket's, once on the kernel path (wire_upstream())
  bool is_source = false;   // replies steered by the verdict program
  bool is_private = false;  // ...by its own instance (unix-dgram)
  // Datagrams user space could not send yet (the target's queue was full:
  // a UNIX receiver takes only net.unix.max_dgram_qlen). Sent on EPOLLOUT,
  // in order; bounded, and what does not fit is dropped and counted. A
  // list, not a deque: an empty deque already holds ~600 bytes of the heap,
  // and most flows never queue (a new page of the heap is ~11 µs of fault
  // on this machine, on a new client's path).
  std::list<std::string> pending;
  bool watched = false;  // in the event loop (see watch_upstream())
};

// In the route's FlowTable (its base), which times it out and evicts it.
struct DatagramRoute::Flow : FlowTable::Node {
  std::string key;           // in flows_: see flow_key()
  sockaddr_storage peer{};   // where replies go...
  socklen_t peer_len = 0;    // ...0 when the client has no address
  uint64_t unix_cookie = 0;  // an AF_UNIX client's own socket (what the verdict sees)
  sockaddr_storage local{};  // UDP: what the flow socket is bound to
  socklen_t local_len = 0;
  bool connected_to_listener = false;
  uint32_t client_hash = 0;

  std::vector<Upstream> upstreams;  // by target index
  uint64_t next_target = 0;         // user space's round-robin position

  // UDP: the flow socket waits for the client's second datagram
  // (DatagramRoute::open_flow_socket()); until then replies leave from the
  // listener.
  bool flow_socket_deferred = false;
  uint64_t client_datagrams = 0;  // what user space forwarded of the client's
  Fd client_socket;               // connected to the client (the reply path); may stay closed
  uint64_t client_socket_cookie = 0;
  bool client_socket_is_udp = false;     // UDP flow socket: the client's datagrams arrive on it
  bool client_socket_is_source = false;  // ...and the verdict program steers them
  // A UDP flow socket admits its client only, by a socket filter, until the
  // tick `filter_until_tick` (see release_filters()).
  bool filtered = false;
  uint64_t filter_until_tick = 0;

  // What the verdict program sees for this client's datagrams: the UDP flow
  // socket's cookie, or the UNIX client's own cookie. 0 = user space.
  uint64_t client_key = 0;
  bool kernel = false;
  bool settled = false;  // see settle()
  uint64_t last_user_ns = 0;
  bool replied_in_user_space = false;  // user space sent the client a reply (the kernel's: probe())
  bool target_refused = false;         // closing because its one target refused (upstream_failed())
  // kernel_drops() of its flow socket when it settled or its filter went:
  // the baseline of every later loss count on it (drops_since_baseline()).
  uint32_t drops_settled = 0;

  // In order from the first datagram (datagram_hold.cpp). What came before
  // the flow could catch its datagrams (on the listener; for AF_UNIX, on
  // the new-client channel) is forwarded first, and until it has been
  // (`leftovers_done`), what the flow catches waits in `waiting`.
  struct Waiting {
    std::string data;
    bool held = false;  // passed up by the verdict program: counted in relay_passed
  };
  bool leftovers_done = true;
  uint64_t connected_in_read = 0;  // UDP: the listener read during which its flow socket connected
  std::list<Waiting> waiting;      // a list: see Upstream::pending
  // On hold (RELAY_FLOW_HOLD): the verdict program passes datagrams up
  // until user space has forwarded as many as it passed.
  bool held = false;
  uint64_t forwarded = 0;                             // held datagrams forwarded
  uint64_t forwarded_written = RELAY_HOLD_LEFTOVERS;  // ...as relay_hold says it
  // Datagrams that reached the flow socket after user space read it and
  // before it entered the map wait there, behind the later ones, until
  // the client sends more: read once the flow is quiet (see linger_check()).
  bool may_linger = false;
  uint64_t linger_last_ns = 0;

  bool replyable() const { return peer_len > 0; }
  // Past one request: the client sent again (on the kernel path user space
  // no longer sees its datagrams, and a flow gets there by sending again).
  bool conversation() const { return kernel || client_datagrams > 1; }
  // What the kernel dropped at the UDP flow socket's full receive buffer
  // while user space reads it (a steered one's drops are counted in
  // count_lost_at_close(); strays its filter dropped, in
  // count_stray_drops()).
  uint32_t user_read_overflow() const {
    if (!client_socket_is_udp || filtered || (kernel && client_socket_is_source)) return 0;
    return drops_since_baseline();
  }
  uint32_t drops_since_baseline() const { return kernel_drops(client_socket.get()) - drops_settled; }
  bool from_client(const sockaddr_storage& from, socklen_t len) const {
    return len == peer_len && std::memcmp(&from, &peer, len) == 0;
  }
  std::string peer_text() const {
    if (!replyable())
      return unix_cookie ? "unnamed unix socket (cookie " + std::to_string(unix_cookie) + ")" : "unnamed";
    return format_address(reinterpret_cast<const sockaddr*>(&peer), peer_len);
  }
};

// A datagram another client's flow socket caught (see
// connect_reply_socket()): handled as if the listener had received it,
// in its place among its client's datagrams there (park_strangers()).
struct DatagramRoute::Stranger {
  sockaddr_storage peer;
  socklen_t peer_len;
  std::string data;
  sockaddr_storage local{};  // where it was sent (the flow socket's address)
  socklen_t local_len = 0;
  uint64_t stamp_ns = 0;    // when the kernel received it, 0 if unknown
  uint64_t read_after = 0;  // listener_reads_ when it was read
  std::string key;          // its client's flow key
};

}  // namespace sockrelay
