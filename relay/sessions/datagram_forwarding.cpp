// The datagrams user space moves itself (a new client's first one, what
// reached a socket before it entered the map, every datagram on the
// user-space path), and the events it watches the flow sockets for.
#include <netinet/in.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>

#include <array>
#include <cstring>
#include <tuple>

#include "common/clock.h"
#include "common/io_errors.h"
#include "sessions/datagram_batch.h"
#include "sessions/datagram_flow.h"
#include "sessions/datagram_route.h"

namespace sockrelay {

namespace {

constexpr size_t kMaxPending = 1024;  // per upstream socket

// A reply sent from the listener leaves from `from`, the address its client
// sent to (IP_PKTINFO / IPV6_PKTINFO): from a wildcard listener, routing
// would pick the source, and a connected client accepts only the address
// it sent to.
ssize_t send_from(int fd, const char* data, size_t len, const sockaddr_storage& to, socklen_t to_len,
                  const sockaddr_storage& from) {
  iovec iov{const_cast<char*>(data), len};
  msghdr msg{};
  msg.msg_name = const_cast<sockaddr_storage*>(&to);
  msg.msg_namelen = to_len;
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(in6_pktinfo))] = {};
  msg.msg_control = control;
  auto put = [&](int level, int type, const void* info, size_t size) {
    cmsghdr* c = reinterpret_cast<cmsghdr*>(control);
    c->cmsg_level = level;
    c->cmsg_type = type;
    c->cmsg_len = CMSG_LEN(size);
    std::memcpy(CMSG_DATA(c), info, size);
    msg.msg_controllen = CMSG_SPACE(size);
  };
  if (from.ss_family == AF_INET6) {
    in6_pktinfo info{};
    info.ipi6_addr = reinterpret_cast<const sockaddr_in6&>(from).sin6_addr;
    put(IPPROTO_IPV6, IPV6_PKTINFO, &info, sizeof(info));
  } else {
    in_pktinfo info{};
    info.ipi_spec_dst = reinterpret_cast<const sockaddr_in&>(from).sin_addr;
    put(IPPROTO_IP, IP_PKTINFO, &info, sizeof(info));
  }
  return sendmsg(fd, &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
}

}  // namespace

void DatagramRoute::send_to_upstream(Flow& flow, const char* data, size_t len) {
  flow.last_user_ns = monotonic_ns();
  ++flow.client_datagrams;
  size_t n = flow.upstreams.size();
  if (broadcast()) {
    bool any = false;
    for (size_t t = 0; t < n; ++t)
      if (target_usable(flow, t)) {
        send_or_queue(flow, t, data, len);
        any = true;
      }
    if (!any) ++counters_.drop_all_targets_down;
    return;
  }
  // The same choice the verdict program makes (relay.bpf.c), among the same
  // live targets, so a flow's first datagram goes where its next ones will.
  std::array<size_t, RELAY_MAX_TARGETS> live;  // no allocation per datagram
  size_t n_live = 0;
  for (size_t t = 0; t < n; ++t)
    if (target_usable(flow, t)) live[n_live++] = t;
  if (n_live == 0) {
    ++counters_.drop_all_targets_down;
    return;
  }
  uint64_t pick = spec_.balance == Balance::Hash ? flow.client_hash : flow.next_target++;
  send_or_queue(flow, live[pick % n_live], data, len);
}

// Sent now, or queued behind what waits for the target's queue to drain.
void DatagramRoute::send_or_queue(Flow& flow, size_t target, const char* data, size_t len) {
  Upstream& up = flow.upstreams[target];
  if (up.pending.empty()) {
    if (send(up.fd.get(), data, len, MSG_DONTWAIT | MSG_NOSIGNAL) >= 0) {
      count_sent(target, len);
      return;
    }
    if (!would_block(errno)) {
      ++counters_.drop_send_error;
      return;
    }
  }
  if (up.pending.size() >= kMaxPending) {
    ++counters_.drop_target_full;
    return;
  }
  up.pending.emplace_back(data, len);
  if (up.pending.size() == 1) watch_upstream(flow, target);  // EPOLLOUT
}

void DatagramRoute::send_to_client(Flow& flow, const char* data, size_t len) {
  flow.last_user_ns = monotonic_ns();
  flow.replied_in_user_space = true;
  ssize_t sent;
  if (flow.client_socket)
    sent = send(flow.client_socket.get(), data, len, MSG_DONTWAIT | MSG_NOSIGNAL);
  else if (flow.replyable() && flow.local_len && flow.local.ss_family != AF_UNIX)
    sent = send_from(listener_.get(), data, len, flow.peer, flow.peer_len, flow.local);
  else if (flow.replyable())
    sent = sendto(listener_.get(), data, len, MSG_DONTWAIT | MSG_NOSIGNAL,
                  reinterpret_cast<const sockaddr*>(&flow.peer), flow.peer_len);
  else {
    ++counters_.drop_no_reply_path;
    return;
  }
  if (sent < 0) {
    ++counters_.drop_send_error;
    return;
  }
  ++counters_.user_packets;
  counters_.user_bytes += len;
}

void DatagramRoute::count_sent(size_t target, size_t len) {
  ++counters_.user_packets;
  counters_.user_bytes += len;
  ++targets_[target].user_packets;
  targets_[target].user_bytes += len;
}

void DatagramRoute::flush_pending(Flow& flow, size_t target) {
  Upstream& up = flow.upstreams[target];
  while (!up.pending.empty()) {
    const std::string& d = up.pending.front();
    if (send(up.fd.get(), d.data(), d.size(), MSG_DONTWAIT | MSG_NOSIGNAL) < 0) {
      if (would_block(errno)) return;  // wait for the next EPOLLOUT
      ++counters_.drop_send_error;
    } else {
      count_sent(target, d.size());
    }
    up.pending.pop_front();
  }
  watch_upstream(flow, target);
  advance_hold(flow);  // it waited for this queue (datagram_hold.cpp)
}

void DatagramRoute::on_upstream_readable(Flow& flow, size_t target, uint32_t events) {
  int fd = flow.upstreams[target].fd.get();
  if (events & EPOLLOUT) flush_pending(flow, target);
  int n = read_batch(fd, buffer_.get(), [&](const sockaddr_storage&, socklen_t, const char* d, size_t size) {
    send_to_client(flow, d, size);
  });
  if (n >= 0 && !(events & EPOLLERR)) return;
  // recvmmsg() reports (and clears) a pending error; else ask SO_ERROR.
  int err = n < 0 ? errno : 0;
  socklen_t len = sizeof(err);
  if (err == 0) getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
  // The error is reported before the queue: replies that came in behind it
  // (a target restarted after refusing an earlier datagram) are delivered,
  // not closed away with the socket.
  if (n < 0)
    read_batch(fd, buffer_.get(), [&](const sockaddr_storage&, socklen_t, const char* d, size_t size) {
      send_to_client(flow, d, size);
    });
  upstream_failed(flow, target, err ? std::strerror(err) : "socket error");
}

// A connected UDP flow socket can still be handed a datagram of another
// client that the kernel matched to it while it was unconnected, if its
// filter could not be set (see connect_reply_socket()): that one is
// handled as the listener's.
void DatagramRoute::on_client_socket_readable(Flow& flow, uint32_t events) {
  std::string key = flow.key;
  std::vector<Stranger> strangers;
  int n = read_batch(flow.client_socket.get(), buffer_.get(),
                     [&](const sockaddr_storage& peer, socklen_t len, const char* d, size_t size) {
                       if (flow.from_client(peer, len))
                         catch_early(flow, d, size, false);
                       else
                         strangers.push_back({peer, len, std::string(d, size), flow.local, flow.local_len});
                     });
  if (n < 0 || (events & EPOLLERR)) destroy_flow(key, "client socket error");
  for (const Stranger& s : strangers) forward_stranger(s);
}

// The kernel still runs a socket's data-ready wake-up after the verdict
// program redirected its skb: once a flow has settled, a socket the verdict
// program steers is not read, or the relay would wake for every datagram it
// never reads (measured: 11-20 % of a core at 100 k datagrams/s).
uint32_t DatagramRoute::upstream_events(const Flow& flow, const Upstream& up) {
  return flow.settled && (up.is_source || up.is_private) ? 0u : static_cast<uint32_t>(EPOLLIN);
}

// A steered upstream socket that needs no event is left out of epoll
// altogether and its errors are polled (poll_errors()): even an errors-only
// registration puts the relay on the socket's wait queue, and the kernel
// then calls into epoll for every datagram the socket receives or sends
// (sock_def_readable/sock_def_write_space; measured ~3 % of a flat-out
// run's samples). With several targets it stays registered: a failed target
// leaves the rotation at once.
void DatagramRoute::watch_upstream(Flow& flow, size_t target) {
  Upstream& up = flow.upstreams[target];
  if (!up.fd) return;
  uint32_t events = upstream_events(flow, up) | (up.pending.empty() ? 0u : static_cast<uint32_t>(EPOLLOUT));
  if (events == 0 && spec_.to.size() == 1) {
    if (up.watched) loop_.remove(up.fd.get());
    up.watched = false;
  } else if (up.watched) {
    // The loop holds the fd (`watched`), so this fails only on a bad
    // argument; the socket keeps its old events then.
    if (auto st = loop_.modify(up.fd.get(), events); !st)
      spdlog::warn("route {}: upstream socket to {}: {}", spec_.route_id, spec_.to[target]->name,
                   st.error().describe());
  } else {
    Flow* raw = &flow;
    auto on_readable = [this, raw, target](uint32_t ev) { on_upstream_readable(*raw, target, ev); };
    // Not watched, poll_errors() still sees its errors.
    up.watched = loop_.add(up.fd.get(), events, on_readable).ok();
  }
}

// Errors of the steered sockets epoll does not watch, once per tick: a
// client gone (ICMP port unreachable on its flow socket) ends its flow, a
// target refusing ends the flow or takes the target out of the rotation,
// as a watched socket's EPOLLERR would, up to a tick later.
void DatagramRoute::poll_errors() {
  auto error_of = [](int fd) {
    int err = 0;
    socklen_t len = sizeof(err);
    return getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0 ? err : errno;
  };
  std::vector<std::pair<std::string, int>> client_errors;
  std::vector<std::tuple<std::string, size_t, int>> upstream_errors;
  std::vector<std::string> stopped;
  for (auto& [key, flow] : flows_) {
    if (!flow->settled) continue;
    if (flow->kernel && flow->client_socket_is_source)
      if (int err = error_of(flow->client_socket.get())) client_errors.emplace_back(key, err);
    for (size_t t = 0; t < flow->upstreams.size(); ++t)
      if (flow->upstreams[t].fd && !flow->upstreams[t].watched)
        if (int err = error_of(flow->upstreams[t].fd.get())) upstream_errors.emplace_back(key, t, err);
    if (kernel_stopped_sending(*flow)) stopped.push_back(key);
  }
  // Acted on after the walk: each may end a flow.
  for (const auto& [key, err] : client_errors)
    destroy_flow(key, std::string("client socket error: ") + std::strerror(err));
  for (const auto& [key, t, err] : upstream_errors) {
    auto it = flows_.find(key);
    if (it != flows_.end() && it->second->upstreams[t].fd)
      upstream_failed(*it->second, t, std::strerror(err));
  }
  for (const auto& key : stopped) {
    auto it = flows_.find(key);
    if (it != flows_.end() && it->second->upstreams[0].fd)
      upstream_failed(*it->second, 0, "the kernel drops its datagrams toward the target (refused before)");
  }
}

// A kernel flow with one target whose datagrams the kernel drops: its
// upstream socket stopped sending after a send error (the target refused),
// and the flow socket's drop count grows (count_lost_at_close()). The
// socket's error alone does not tell: it is reported once, to whoever reads
// the socket first (likely the verdict program's read of a datagram arriving
// on it), and in the soak most such flows showed none to poll_errors() and
// stayed broken until they expired (5 min, UDP echo killed every 8 s: 31 %
// of datagrams answered; with this check 89 %).
// The program's own drops (target-full under a stalled target) land in the
// same count, so they are taken off first: a target that is merely slow does
// not end the flow.
bool DatagramRoute::kernel_stopped_sending(const Flow& flow) const {
  // While the socket's filter is on, its drops are strays too: told apart
  // when the filter goes (count_stray_drops() moves the baseline).
  if (spec_.to.size() != 1 || !flow.kernel || !flow.client_socket_is_source || !flow.upstreams[0].fd ||
      flow.filtered)
    return false;
  return flow.drops_since_baseline() > maps_->flow_dropped(flow.client_key);
}

}  // namespace sockrelay
