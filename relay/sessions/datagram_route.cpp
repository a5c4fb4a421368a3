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
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                   std::chrono::steady_clock::now().time_since_epoch())
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
  std::string key;           // in flows_: see identify_client()
  sockaddr_storage peer{};   // where replies go...
  socklen_t peer_len = 0;    // ...0 when the client has no address
  uint64_t unix_cookie = 0;  // an AF_UNIX client's own socket (what the verdict sees)
  bool connected_to_listener = false;

  Fd upstream;  // connected to the route's target
  uint64_t upstream_cookie = 0;
  bool upstream_is_source = false;  // replies steered by the verdict program
  bool upstream_private = false;    // ...by its own instance (unix-dgram)

  Fd client_socket;  // connected to the client (the reply path); may stay closed
  uint64_t client_socket_cookie = 0;
  bool client_socket_is_source = false;  // UDP flow socket: client datagrams arrive on it

  // What the verdict program sees for this client's datagrams: the UDP flow
  // socket's cookie, or the UNIX client's own cookie. 0 = user space.
  uint64_t client_key = 0;
  bool kernel = false;
  uint64_t last_user_ns = 0;

  bool replyable() const { return peer_len > 0; }
  std::string peer_text() const {
    if (!replyable())
      return unix_cookie ? "unnamed unix socket (cookie " + std::to_string(unix_cookie) + ")" : "unnamed";
    return format_address(reinterpret_cast<const sockaddr*>(&peer), peer_len);
  }
};

DatagramRoute::DatagramRoute(DatagramRouteSpec spec, Fd listener, MapWriter* maps, EventLoop& loop,
                             SessionBudget& budget)
    : spec_(spec),
      listener_(std::move(listener)),
      maps_(maps),
      loop_(loop),
      budget_(budget),
      buffer_(kBatch * kMaxDatagram) {}

DatagramRoute::~DatagramRoute() { stop(); }

bool DatagramRoute::unix_listener() const { return spec_.from->address.family() == AF_UNIX; }

Status DatagramRoute::start() {
  auto cookie = socket_cookie(listener_.get());
  if (!cookie) return cookie.error();
  listener_cookie_ = *cookie;
  listener_inode_ = socket_inode(listener_.get());
  if (spec_.kernel && unix_listener())
    if (auto st = steer_unix_listener(); !st) return st.error().wrap("listener " + spec_.from->name);
  // A UDP listener stays out of the map: each client gets a flow socket,
  // so the listener only ever sees first datagrams.
  if (auto st = loop_.add(listener_.get(), EPOLLIN, [this](uint32_t) { on_listener_readable(); }); !st)
    return st;
  started_ = true;
  return {};
}

Status DatagramRoute::steer_unix_listener() {
  // Datagrams already queued (systemd may have started us for them) are
  // read with their senders before the verdict program takes over.
  on_listener_readable();
  // AF_UNIX routes by sender, so known clients are steered on the listener
  // itself; unknown ones are tagged with their cookie and redirected to a
  // socket pair of ours, arriving here whole and with their sender.
  int pair[2];
  if (socketpair(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, pair) != 0)
    return errno_error("socketpair for new clients");
  new_client_tx_ = Fd(pair[0]);
  new_client_rx_ = Fd(pair[1]);
  auto tx_cookie = socket_cookie(new_client_tx_.get());
  if (!tx_cookie) return tx_cookie.error();
  new_client_tx_cookie_ = *tx_cookie;
  if (auto st = maps_->add_target(new_client_tx_cookie_, new_client_tx_.get()); !st) return st;
  if (auto st = loop_.add(new_client_rx_.get(), EPOLLIN, [this](uint32_t) { on_new_client_readable(); }); !st)
    return st;
  MapWriter::PrivateProgram program;
  program.new_client_target = new_client_tx_cookie_;
  if (auto st = maps_->add_private_source(listener_cookie_, listener_.get(), program); !st) return st;
  in_map_ = true;
  return {};
}

void DatagramRoute::stop() {
  if (!started_) return;
  while (!flows_.empty()) destroy_flow(flows_.begin()->first, false);
  loop_.remove(listener_.get());
  if (in_map_) {
    maps_->remove_private_source(listener_cookie_);
    maps_->remove_target(new_client_tx_cookie_);
    loop_.remove(new_client_rx_.get());
  }
  in_map_ = false;
  started_ = false;
}

void DatagramRoute::on_new_client_readable() {
  for (int round = 0; round < 8; ++round) {
    int n = read_batch(
        new_client_rx_.get(), buffer_, [&](const sockaddr_storage&, socklen_t, const char* d, size_t size) {
          relay_new_client_tag tag;
          if (size < sizeof(tag)) return;  // cannot happen: the verdict program always tags
          std::memcpy(&tag, d, sizeof(tag));
          sockaddr_storage none{};
          handle_client_datagram(none, 0, tag.sender_cookie, d + sizeof(tag), size - sizeof(tag));
        });
    if (n < kBatch) break;
  }
}

void DatagramRoute::on_listener_readable() {
  // A few batches per wake-up, then back to the loop so one busy route
  // cannot starve the others.
  for (int round = 0; round < 8; ++round) {
    int n = read_batch(listener_.get(), buffer_,
                       [&](const sockaddr_storage& peer, socklen_t len, const char* d, size_t size) {
                         handle_client_datagram(peer, len, 0, d, size);
                       });
    if (n < kBatch) break;
  }
}

void DatagramRoute::handle_client_datagram(const sockaddr_storage& peer, socklen_t peer_len,
                                           uint64_t tagged_cookie, const char* data, size_t len) {
  std::string key;
  if (!unix_listener())
    key.assign(reinterpret_cast<const char*>(&peer), peer_len);
  else if (tagged_cookie)
    key = "cookie:" + std::to_string(tagged_cookie);
  else
    key = "addr:" + std::string(reinterpret_cast<const char*>(&peer), peer_len);
  auto it = flows_.find(key);
  if (it == flows_.end() && !tagged_cookie && unix_listener()) {
    auto alias = unix_address_alias_.find(key);  // a known client seen untagged
    if (alias != unix_address_alias_.end()) it = flows_.find(alias->second);
  }
  Flow* flow = it != flows_.end() ? it->second.get() : create_flow(key, peer, peer_len, tagged_cookie);
  if (!flow) return;  // counted by create_flow
  send_to_upstream(*flow, data, len);
}

DatagramRoute::Flow* DatagramRoute::create_flow(const std::string& key, const sockaddr_storage& peer,
                                                socklen_t peer_len, uint64_t unix_cookie) {
  auto flow = std::make_unique<Flow>();
  flow->key = key;
  flow->unix_cookie = unix_cookie;
  if (has_reply_address(peer, peer_len)) {
    flow->peer = peer;
    flow->peer_len = peer_len;
  }
  if (unix_listener()) {
    // Learn the other half of the client's identity: its address from its
    // cookie, or its cookie from its address.
    auto info = unix_cookie ? find_unix_dgram_by_cookie(unix_cookie)
                            : find_unix_dgram_by_address(reinterpret_cast<const sockaddr*>(&peer), peer_len);
    if (!info) {
      spdlog::debug("route {}: {}", spec_.route_id, info.error().describe());
    } else if (info->has_value()) {
      const UnixSocketInfo& u = **info;
      flow->unix_cookie = u.cookie;
      flow->connected_to_listener = u.peer_inode == listener_inode_;
      if (u.address_length > offsetof(sockaddr_un, sun_path)) {
        std::memcpy(&flow->peer, &u.address, u.address_length);
        flow->peer_len = u.address_length;
      }
    }
  }
  if (!budget_.try_take()) {
    if (counters_.refused_max_sessions++ % 1000 == 0)
      spdlog::warn("route {}: max-sessions ({}) reached, dropping datagrams from new client {} (counted)",
                   spec_.route_id, budget_.max(), flow->peer_text());
    return nullptr;
  }
  flow->last_user_ns = now_ns();

  auto upstream = open_datagram_upstream(*spec_.to);
  if (!upstream) {
    budget_.give_back();
    if (counters_.drop_setup_failed++ % 1000 == 0)
      spdlog::warn("route {}: new client {}: {} (datagram dropped, counted)", spec_.route_id,
                   flow->peer_text(), upstream.error().describe());
    return nullptr;
  }
  flow->upstream = std::move(*upstream);
  flow->upstream_cookie = socket_cookie(flow->upstream.get()).value();

  // The reply path: a socket connected to the client, which the kernel can
  // send through. Without one, user space replies from the listener.
  if (flow->replyable() && !unix_listener()) {
    auto local = spec_.from->address;
    auto s = open_udp_flow_socket(local.sa(), local.length, reinterpret_cast<const sockaddr*>(&flow->peer),
                                  flow->peer_len);
    if (s) {
      flow->client_socket = std::move(*s);
      flow->client_socket_is_source = true;
    } else {
      spdlog::debug("route {}: {}; replies to {} go through user space", spec_.route_id, s.error().describe(),
                    flow->peer_text());
    }
  } else if (flow->replyable() && !flow->connected_to_listener) {
    // A client that connect()ed to our listener accepts datagrams from the
    // listener only, so a socket of ours connected to it could not reply.
    auto s = open_unix_flow_socket(reinterpret_cast<const sockaddr*>(&flow->peer), flow->peer_len);
    if (s) flow->client_socket = std::move(*s);
  }
  if (flow->client_socket) flow->client_socket_cookie = socket_cookie(flow->client_socket.get()).value();

  if (spec_.kernel) {
    if (auto st = wire_kernel(*flow); !st)
      spdlog::warn("route {}: client {}: kernel path not set up ({}); user space carries this flow",
                   spec_.route_id, flow->peer_text(), st.error().describe());
  }

  Flow* raw = flow.get();
  auto on_upstream = [this, raw](uint32_t events) { on_upstream_readable(*raw, events); };
  (void)loop_.add(raw->upstream.get(), EPOLLIN, on_upstream);
  if (raw->client_socket_is_source) {
    auto on_client = [this, raw](uint32_t events) { on_client_socket_readable(*raw, events); };
    (void)loop_.add(raw->client_socket.get(), EPOLLIN, on_client);
  }
  if (unix_listener() && raw->replyable() && raw->unix_cookie) {
    std::string alias = "addr:" + std::string(reinterpret_cast<const char*>(&raw->peer), raw->peer_len);
    if (alias != key) unix_address_alias_[alias] = key;
  }
  flows_[key] = std::move(flow);
  ++counters_.flows_created;
  spdlog::debug("route {}: new flow from {} ({} path)", spec_.route_id, raw->peer_text(),
                raw->kernel ? "kernel" : "user-space");
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
    flow.client_key = flow.unix_cookie;  // 0 if unknown: user space forwards
  }
  // Replies go through the kernel when we hold a socket connected to the
  // client; otherwise the upstream socket stays out of the verdict program
  // and user space reads its replies with their boundaries intact.
  flow.upstream_is_source = static_cast<bool>(flow.client_socket);

  // Order: flows first, then targets, then sources (which starts the
  // verdict program on the socket).
  if (flow.upstream_is_source)
    if (auto st = maps_->set_flow(flow.upstream_cookie, FlowEntry{flow.client_socket_cookie, route, 0}); !st)
      return st;
  if (flow.client_key)
    if (auto st = maps_->set_flow(flow.client_key, FlowEntry{flow.upstream_cookie, route, 0}); !st) return st;
  if (auto st = maps_->add_target(flow.upstream_cookie, flow.upstream.get()); !st) return st;
  if (flow.client_socket)
    if (auto st = maps_->add_target(flow.client_socket_cookie, flow.client_socket.get()); !st) return st;
  if (flow.client_socket_is_source)
    if (auto st = maps_->add_source(flow.client_socket_cookie, flow.client_socket.get()); !st) return st;
  if (flow.upstream_is_source) {
    if (spec_.to->address.family() == AF_UNIX) {
      // AF_UNIX shows the verdict program the sender: the one upstream
      // server, shared by every flow. This socket needs its own instance.
      MapWriter::PrivateProgram program;
      program.fixed_source = flow.upstream_cookie;
      if (auto st = maps_->add_private_source(flow.upstream_cookie, flow.upstream.get(), program); !st)
        return st;
      flow.upstream_private = true;
    } else if (auto st = maps_->add_source(flow.upstream_cookie, flow.upstream.get()); !st) {
      return st;
    }
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

void DatagramRoute::on_upstream_readable(Flow& flow, uint32_t events) {
  std::string key = flow.key;
  int n = read_batch(
      flow.upstream.get(), buffer_,
      [&](const sockaddr_storage&, socklen_t, const char* d, size_t size) { send_to_client(flow, d, size); });
  if (n < 0 || (events & EPOLLERR)) destroy_flow(key, true);
}

void DatagramRoute::on_client_socket_readable(Flow& flow, uint32_t events) {
  std::string key = flow.key;
  int n = read_batch(flow.client_socket.get(), buffer_,
                     [&](const sockaddr_storage&, socklen_t, const char* d, size_t size) {
                       send_to_upstream(flow, d, size);
                     });
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
    spdlog::debug("route {}: flow from {} closed on error: {}", spec_.route_id, flow.peer_text(),
                  err ? std::strerror(err) : "socket error");
  }
  if (flow.kernel) {
    // Stop steering first, then forget the routes, then the targets.
    if (flow.upstream_private)
      maps_->remove_private_source(flow.upstream_cookie);
    else if (flow.upstream_is_source)
      maps_->remove_source(flow.upstream_cookie);
    if (flow.client_socket_is_source) maps_->remove_source(flow.client_socket_cookie);
    if (flow.client_key) maps_->remove_flow(flow.client_key);
    maps_->remove_flow(flow.upstream_cookie);
    maps_->remove_target(flow.upstream_cookie);
    if (flow.client_socket) maps_->remove_target(flow.client_socket_cookie);
  }
  loop_.remove(flow.upstream.get());
  if (flow.client_socket) loop_.remove(flow.client_socket.get());
  if (flow.replyable())
    unix_address_alias_.erase("addr:" +
                              std::string(reinterpret_cast<const char*>(&flow.peer), flow.peer_len));
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
    spdlog::debug("route {}: {} idle flow(s) expired, {} left", spec_.route_id, expired.size(),
                  flows_.size());
}

}  // namespace sockrelay
