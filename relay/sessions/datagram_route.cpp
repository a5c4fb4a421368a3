#include "sessions/datagram_route.h"

#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <cstddef>
#include <cstring>

#include "common/socket_cookie.h"
#include "config/address.h"
#include "endpoints/endpoint.h"
#include "endpoints/unix_diag.h"
#include "relay_shared.h"

namespace sockrelay {

namespace {

constexpr int kBatch = 32;
constexpr size_t kMaxDatagram = 65536;

uint64_t now_ns() {
  return static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
          .count());
}

// A UNIX client that never bound has no address: nothing can reply to it.
bool has_reply_address(const sockaddr_storage& peer, socklen_t len) {
  return peer.ss_family != AF_UNIX || len > offsetof(sockaddr_un, sun_path);
}

// Reads up to a batch of datagrams; calls `each(peer, len, data, size)`.
// Returns how many it read, 0 when none are queued, -1 on a socket error.
template <typename Each>
int read_batch(int fd, std::vector<char>& buffer, Each each) {
  mmsghdr msgs[kBatch];
  iovec iovs[kBatch];
  sockaddr_storage peers[kBatch];
  std::memset(msgs, 0, sizeof(msgs));
  for (int i = 0; i < kBatch; ++i) {
    iovs[i] = {buffer.data() + i * kMaxDatagram, kMaxDatagram};
    msgs[i].msg_hdr.msg_iov = &iovs[i];
    msgs[i].msg_hdr.msg_iovlen = 1;
    msgs[i].msg_hdr.msg_name = &peers[i];
    msgs[i].msg_hdr.msg_namelen = sizeof(peers[i]);
  }
  int n = recvmmsg(fd, msgs, kBatch, MSG_DONTWAIT, nullptr);
  if (n < 0) return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR ? 0 : -1;
  for (int i = 0; i < n; ++i)
    each(peers[i], msgs[i].msg_hdr.msg_namelen, static_cast<const char*>(iovs[i].iov_base), msgs[i].msg_len);
  return n;
}

}  // namespace

struct DatagramRoute::Flow {
  std::string key;  // the peer's address bytes
  sockaddr_storage peer{};
  socklen_t peer_len = 0;
  bool replyable = false;

  Fd upstream;               // connected to the route's target
  uint64_t upstream_cookie = 0;
  bool upstream_private = false;  // has its own verdict instance (unix-dgram)

  Fd client_socket;  // connected to the client (the reply path); may stay closed
  uint64_t client_socket_cookie = 0;
  bool client_socket_is_source = false;  // UDP flow socket: client datagrams arrive on it

  // What the verdict program sees for this client's datagrams: the UDP flow
  // socket's cookie, or the UNIX client's own cookie. 0 = user space.
  uint64_t client_key = 0;
  uint64_t client_unix_cookie = 0;  // a UNIX client's own socket, from sock_diag
  bool kernel = false;
  uint64_t last_user_ns = 0;
};

DatagramRoute::DatagramRoute(DatagramRouteSpec spec, Fd listener, MapWriter* maps, EventLoop& loop,
                             SessionBudget& budget)
    : spec_(spec), listener_(std::move(listener)), maps_(maps), loop_(loop), budget_(budget), buffer_(kBatch * kMaxDatagram) {}

DatagramRoute::~DatagramRoute() { stop(); }

Status DatagramRoute::start() {
  auto cookie = socket_cookie(listener_.get());
  if (!cookie) return cookie.error();
  listener_cookie_ = *cookie;
  listener_inode_ = socket_inode(listener_.get());
  if (spec_.kernel) {
    // The listener's own skbs (new clients) go to user space; for a UNIX
    // listener the verdict program sees the senders, not this cookie.
    if (auto st = maps_->set_flow(listener_cookie_, FlowEntry{0, spec_.route_id, RELAY_FLOW_TO_USER}); !st)
      return st.error().wrap("route listener flow");
    if (auto st = maps_->add_source(listener_cookie_, listener_.get()); !st)
      return st.error().wrap("put listener " + spec_.from->name + " in the sockmap");
  }
  if (auto st = loop_.add(listener_.get(), EPOLLIN, [this](uint32_t) { on_listener_readable(); }); !st) return st;
  started_ = true;
  return {};
}

void DatagramRoute::stop() {
  if (!started_) return;
  while (!flows_.empty()) destroy_flow(flows_.begin()->first, false);
  loop_.remove(listener_.get());
  if (spec_.kernel) {
    maps_->remove_source(listener_cookie_);
    maps_->remove_flow(listener_cookie_);
  }
  started_ = false;
}

void DatagramRoute::on_listener_readable() {
  // A few batches per wake-up, then back to the loop so one busy route
  // cannot starve the others.
  for (int round = 0; round < 8; ++round) {
    int n = read_batch(listener_.get(), buffer_, [&](const sockaddr_storage& peer, socklen_t len, const char* d,
                                                     size_t size) { handle_client_datagram(peer, len, d, size); });
    if (n < kBatch) break;
  }
}

void DatagramRoute::handle_client_datagram(const sockaddr_storage& peer, socklen_t peer_len, const char* data,
                                           size_t len) {
  std::string key(reinterpret_cast<const char*>(&peer), has_reply_address(peer, peer_len) ? peer_len : 0);
  auto it = flows_.find(key);
  Flow* flow = it != flows_.end() ? it->second.get() : create_flow(peer, peer_len);
  if (!flow) return;  // counted by create_flow
  send_to_upstream(*flow, data, len);
}

DatagramRoute::Flow* DatagramRoute::create_flow(const sockaddr_storage& peer, socklen_t peer_len) {
  std::string peer_text = format_address(reinterpret_cast<const sockaddr*>(&peer), peer_len);
  if (!budget_.try_take()) {
    if (counters_.refused_max_sessions++ % 1000 == 0)
      spdlog::warn("route {}: max-sessions ({}) reached, dropping datagrams from new client {} (counted)",
                   spec_.route_id, budget_.max(), peer_text);
    return nullptr;
  }
  auto flow = std::make_unique<Flow>();
  flow->replyable = has_reply_address(peer, peer_len);
  flow->key.assign(reinterpret_cast<const char*>(&peer), flow->replyable ? peer_len : 0);
  flow->peer = peer;
  flow->peer_len = peer_len;
  flow->last_user_ns = now_ns();

  auto upstream = open_datagram_upstream(*spec_.to);
  if (!upstream) {
    budget_.give_back();
    if (counters_.drop_setup_failed++ % 1000 == 0)
      spdlog::warn("route {}: new client {}: {} (datagram dropped, counted)", spec_.route_id, peer_text,
                   upstream.error().describe());
    return nullptr;
  }
  flow->upstream = std::move(*upstream);
  flow->upstream_cookie = socket_cookie(flow->upstream.get()).value();

  // The reply path: a socket connected to the client, so that the kernel can
  // send through it. Without one, replies go out of the listener from user space.
  if (flow->replyable && peer.ss_family != AF_UNIX) {
    auto local = spec_.from->address;
    auto s = open_udp_flow_socket(local.sa(), local.length, reinterpret_cast<const sockaddr*>(&peer), peer_len);
    if (s) {
      flow->client_socket = std::move(*s);
      flow->client_socket_is_source = true;
    } else {
      spdlog::debug("route {}: {}; replies to {} go through user space", spec_.route_id, s.error().describe(), peer_text);
    }
  } else if (flow->replyable) {
    // AF_UNIX routes by sender: learn the client's cookie. A client that
    // connect()ed to our listener accepts datagrams from the listener only,
    // so a socket of ours connected to it could not reply.
    auto info = find_unix_dgram_socket(reinterpret_cast<const sockaddr*>(&peer), peer_len);
    bool connected_to_us = false;
    if (info && info->has_value()) {
      flow->client_unix_cookie = (*info)->cookie;
      connected_to_us = (*info)->peer_inode == listener_inode_;
    } else if (!info) {
      spdlog::debug("route {}: {}", spec_.route_id, info.error().describe());
    }
    if (!connected_to_us) {
      auto s = open_unix_flow_socket(reinterpret_cast<const sockaddr*>(&peer), peer_len);
      if (s) flow->client_socket = std::move(*s);
    }
  }
  if (flow->client_socket) flow->client_socket_cookie = socket_cookie(flow->client_socket.get()).value();

  if (spec_.kernel) {
    if (auto st = wire_kernel(*flow); !st)
      spdlog::warn("route {}: client {}: kernel path not set up ({}); user space carries this flow", spec_.route_id,
                   peer_text, st.error().describe());
  }

  Flow* raw = flow.get();
  std::string key = flow->key;
  auto on_upstream = [this, raw](uint32_t events) { on_upstream_readable(*raw, events); };
  (void)loop_.add(raw->upstream.get(), EPOLLIN, on_upstream);
  if (raw->client_socket && raw->client_socket_is_source) {
    auto on_client = [this, raw](uint32_t events) { on_client_socket_readable(*raw, events); };
    (void)loop_.add(raw->client_socket.get(), EPOLLIN, on_client);
  }
  flows_[key] = std::move(flow);
  ++counters_.flows_created;
  spdlog::debug("route {}: new flow from {} ({} path)", spec_.route_id, peer_text, raw->kernel ? "kernel" : "user-space");
  // Data that reached the sockets before they entered the map is not
  // redirected until more arrives: move it now.
  on_upstream_readable(*raw, EPOLLIN);
  if (flows_.count(key) && raw->client_socket_is_source) on_client_socket_readable(*raw, EPOLLIN);
  return flows_.count(key) ? raw : nullptr;
}

Status DatagramRoute::wire_kernel(Flow& flow) {
  const uint32_t route = spec_.route_id;
  // Where the client's datagrams show up in the verdict program.
  if (flow.client_socket_is_source) {
    flow.client_key = flow.client_socket_cookie;
  } else {
    flow.client_key = flow.client_unix_cookie;  // 0 if unknown: user space forwards
  }
  bool reply_in_kernel = static_cast<bool>(flow.client_socket);
  uint64_t reply_target = reply_in_kernel ? flow.client_socket_cookie : 0;

  // Order: flows first, then targets, then sources (which starts the
  // verdict program on the socket).
  if (auto st = maps_->set_flow(flow.upstream_cookie,
                                FlowEntry{reply_target, route, reply_in_kernel ? 0u : RELAY_FLOW_TO_USER});
      !st)
    return st;
  if (flow.client_key)
    if (auto st = maps_->set_flow(flow.client_key, FlowEntry{flow.upstream_cookie, route, 0}); !st) return st;
  if (auto st = maps_->add_target(flow.upstream_cookie, flow.upstream.get()); !st) return st;
  if (reply_in_kernel)
    if (auto st = maps_->add_target(flow.client_socket_cookie, flow.client_socket.get()); !st) return st;
  if (flow.client_socket_is_source)
    if (auto st = maps_->add_source(flow.client_socket_cookie, flow.client_socket.get()); !st) return st;
  // AF_UNIX shows the verdict program the sender (the upstream server,
  // shared by every flow): the upstream socket needs its own instance.
  if (spec_.to->address.family() == AF_UNIX) {
    if (auto st = maps_->add_private_source(flow.upstream_cookie, flow.upstream.get()); !st) return st;
    flow.upstream_private = true;
  } else {
    if (auto st = maps_->add_source(flow.upstream_cookie, flow.upstream.get()); !st) return st;
  }
  flow.kernel = true;
  return {};
}

void DatagramRoute::send_to_upstream(Flow& flow, const char* data, size_t len) {
  flow.last_user_ns = now_ns();
  if (send(flow.upstream.get(), data, len, MSG_DONTWAIT | MSG_NOSIGNAL) < 0) {
    ++counters_.drop_send_error;
    return;
  }
  ++counters_.user_packets;
  counters_.user_bytes += len;
}

void DatagramRoute::send_to_client(Flow& flow, const char* data, size_t len) {
  flow.last_user_ns = now_ns();
  ssize_t sent;
  if (flow.client_socket)
    sent = send(flow.client_socket.get(), data, len, MSG_DONTWAIT | MSG_NOSIGNAL);
  else if (flow.replyable)
    sent = sendto(listener_.get(), data, len, MSG_DONTWAIT | MSG_NOSIGNAL, reinterpret_cast<const sockaddr*>(&flow.peer),
                  flow.peer_len);
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

void DatagramRoute::on_upstream_readable(Flow& flow, uint32_t events) {
  std::string key = flow.key;
  int n = read_batch(flow.upstream.get(), buffer_,
                     [&](const sockaddr_storage&, socklen_t, const char* d, size_t size) { send_to_client(flow, d, size); });
  if (n < 0 || (events & EPOLLERR)) destroy_flow(key, true);
}

void DatagramRoute::on_client_socket_readable(Flow& flow, uint32_t events) {
  std::string key = flow.key;
  int n = read_batch(flow.client_socket.get(), buffer_, [&](const sockaddr_storage&, socklen_t, const char* d,
                                                             size_t size) { send_to_upstream(flow, d, size); });
  if (n < 0 || (events & EPOLLERR)) destroy_flow(key, true);
}

void DatagramRoute::destroy_flow(const std::string& key, bool failed) {
  auto it = flows_.find(key);
  if (it == flows_.end()) return;
  Flow& flow = *it->second;
  if (failed) {
    int err = 0;
    socklen_t len = sizeof(err);
    getsockopt(flow.upstream.get(), SOL_SOCKET, SO_ERROR, &err, &len);
    ++counters_.flows_failed;
    spdlog::debug("route {}: flow from {} closed on error: {}", spec_.route_id,
                  format_address(reinterpret_cast<const sockaddr*>(&flow.peer), flow.peer_len),
                  err ? std::strerror(err) : "socket error");
  }
  if (flow.kernel) {
    // Stop steering first, then forget the routes, then the targets.
    if (flow.upstream_private)
      maps_->remove_private_source(flow.upstream_cookie);
    else
      maps_->remove_source(flow.upstream_cookie);
    if (flow.client_socket_is_source) maps_->remove_source(flow.client_socket_cookie);
    if (flow.client_key) maps_->remove_flow(flow.client_key);
    maps_->remove_flow(flow.upstream_cookie);
    maps_->remove_target(flow.upstream_cookie);
    if (flow.client_socket) maps_->remove_target(flow.client_socket_cookie);
  }
  loop_.remove(flow.upstream.get());
  if (flow.client_socket) loop_.remove(flow.client_socket.get());
  flows_.erase(it);
  budget_.give_back();
}

uint64_t DatagramRoute::last_activity_ns(const Flow& flow) const {
  uint64_t last = flow.last_user_ns;
  if (flow.kernel) {
    last = std::max(last, maps_->flow_last_ns(flow.upstream_cookie));
    if (flow.client_key) last = std::max(last, maps_->flow_last_ns(flow.client_key));
  }
  return last;
}

void DatagramRoute::expire_idle() {
  uint64_t now = now_ns();
  uint64_t idle = static_cast<uint64_t>(std::chrono::nanoseconds(spec_.idle_timeout).count());
  std::vector<std::string> expired;
  for (const auto& [key, flow] : flows_)
    if (now - std::min(now, last_activity_ns(*flow)) > idle) expired.push_back(key);
  for (const auto& key : expired) {
    destroy_flow(key, false);
    ++counters_.flows_expired;
  }
  if (!expired.empty())
    spdlog::debug("route {}: {} idle flow(s) expired, {} left", spec_.route_id, expired.size(), flows_.size());
}

}  // namespace sockrelay
