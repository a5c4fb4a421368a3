#include "sessions/bridge_route.h"

#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "common/clock.h"
#include "common/io_errors.h"
#include "config/address.h"
#include "endpoints/endpoint.h"
#include "sessions/send_queue.h"
#include "sessions/stop_drain.h"

namespace sockrelay {

namespace {

constexpr size_t kMaxMessage = 256 * 1024;  // largest datagram or seqpacket message carried whole
constexpr size_t kStreamChunk = 64 * 1024;  // one read of a byte stream = one datagram
constexpr size_t kQueueLimit = 4 << 20;     // bytes waiting toward one connection
constexpr int kReadBatch = 64;              // reads per wake-up: one busy peer cannot starve the others

}  // namespace

struct BridgeRoute::Session {
  uint64_t id = 0;
  Fd conn;                    // the connection: accepted (connection source) or ours (datagram source)
  Fd dgram;                   // connection source: our connected datagram socket toward the target
  sockaddr_storage client{};  // datagram source: where replies go
  socklen_t client_len = 0;
  std::string client_key;
  std::string peer;
  bool connecting = false;
  bool conn_eof = false;
  SendQueue to_conn;  // datagrams (or replies) the connection has not taken yet
  uint32_t conn_events = 0;
  uint64_t started_ns = 0, last_ns = 0;
};

BridgeRoute::BridgeRoute(BridgeRouteSpec spec, Fd listener, EventLoop& loop, SessionBudget& budget)
    : spec_(std::move(spec)),
      listener_(std::move(listener)),
      loop_(loop),
      budget_(budget),
      admission_(spec_.route_id, spec_.policy, budget, counters_.refused_policy,
                 counters_.refused_max_sessions),
      gate_(loop) {}

BridgeRoute::~BridgeRoute() { stop(); }

bool BridgeRoute::datagram_source() const { return kind_is_datagram(spec_.from->kind); }

// The connection end keeps message boundaries (seqpacket): one datagram is
// one message, never split.
bool BridgeRoute::keeps_messages() const {
  return kind_socktype(datagram_source() ? spec_.to->kind : spec_.from->kind) == SOCK_SEQPACKET;
}

Status BridgeRoute::start() {
  if (auto st = gate_.start(listener_.get(), [this](uint32_t) { on_listener_readable(); }); !st) return st;
  started_ = true;
  return {};
}

void BridgeRoute::stop() {
  if (!started_) return;
  deliver_before_stop();
  while (!sessions_.empty()) close_session(sessions_.begin()->first, false);
  gate_.stop();
  started_ = false;
}

// Stop/reload: what sessions took in but their connection has not taken
// yet is written first, as the stream route does; a connection still full
// after kStopDrain loses the rest (counted).
void BridgeRoute::deliver_before_stop() {
  drain_before_stop(
      [this] {
        std::vector<std::pair<int, uint64_t>> waiting;
        for (const auto& [id, s] : sessions_)
          if (!s->connecting && !s->to_conn.empty()) waiting.emplace_back(s->conn.get(), id);
        return waiting;
      },
      [this](uint64_t id) {
        auto it = sessions_.find(id);
        if (it != sessions_.end()) flush_to_conn(*it->second);
      });
  for (const auto& [id, s] : sessions_) counters_.dropped_messages += s->to_conn.entries();
}

void BridgeRoute::on_listener_readable() {
  if (!datagram_source()) {
    admission_.serve({listener_.get(), gate_, fd_limit_log_, counters_.fd_limit, spec_.wait_when_full},
                     [this](Admission::Peer client) { open_connection_session(std::move(client)); });
    return;
  }
  std::vector<char> buf(kMaxMessage);
  for (int round = 0; round < kReadBatch; ++round) {
    sockaddr_storage peer{};
    socklen_t peer_len = sizeof(peer);
    ssize_t n = recvfrom(listener_.get(), buf.data(), buf.size(), MSG_DONTWAIT,
                         reinterpret_cast<sockaddr*>(&peer), &peer_len);
    if (n < 0) {
      if (!would_block(errno)) spdlog::warn("route {}: recvfrom: {}", spec_.route_id, std::strerror(errno));
      return;
    }
    on_datagram(buf.data(), static_cast<size_t>(n), peer, peer_len);
  }
}

// A datagram from a client: onto its session's connection, which is opened
// for its first datagram.
void BridgeRoute::on_datagram(const char* data, size_t len, const sockaddr_storage& peer,
                              socklen_t peer_len) {
  std::string key(reinterpret_cast<const char*>(&peer), peer_len);
  auto found = by_client_.find(key);
  Session* s = found != by_client_.end() ? sessions_[found->second].get()
                                         : open_datagram_session(peer, peer_len, std::move(key));
  if (s == nullptr || !queue_to_conn(*s, data, len)) return;
  if (!s->connecting && flush_to_conn(*s)) update_events(*s);
}

// Datagram source: a new client, admitted, gets its own connection to the
// target. Null when it was refused or the connection could not start.
BridgeRoute::Session* BridgeRoute::open_datagram_session(const sockaddr_storage& peer, socklen_t peer_len,
                                                         std::string key) {
  std::string peer_text = format_address(reinterpret_cast<const sockaddr*>(&peer), peer_len);
  if (!admission_.admit(-1, peer, peer_text)) return nullptr;
  auto conn = open_stream_upstream(*spec_.to);
  if (!conn) {
    budget_.give_back();
    count_open_failure(peer_text, conn.error());
    return nullptr;
  }
  auto owned = std::make_unique<Session>();
  owned->conn = std::move(*conn);
  owned->client = peer;
  owned->client_len = peer_len;
  owned->client_key = std::move(key);
  owned->peer = std::move(peer_text);
  owned->connecting = true;
  Session* s = add_session(std::move(owned));
  by_client_[s->client_key] = s->id;
  // Writable = connected (or failed: SO_ERROR tells).
  if (!watch(*s, s->conn.get(), EPOLLOUT, [this, s](uint32_t events) { on_conn_event(*s, events); }))
    return nullptr;
  s->conn_events = EPOLLOUT;
  return s;
}

// Connection source: an admitted connection gets its own datagram socket
// toward the target.
void BridgeRoute::open_connection_session(Admission::Peer client) {
  auto dgram = open_datagram_upstream(*spec_.to);
  if (!dgram) {
    budget_.give_back();
    count_open_failure(client.text + " (client closed)", dgram.error());
    return;
  }
  auto owned = std::make_unique<Session>();
  owned->conn = std::move(client.fd);
  owned->dgram = std::move(*dgram);
  owned->peer = std::move(client.text);
  Session* s = add_session(std::move(owned));
  ++counters_.sessions_created;
  if (!watch(*s, s->conn.get(), EPOLLIN | EPOLLRDHUP,
             [this, s](uint32_t events) { on_conn_event(*s, events); }))
    return;
  s->conn_events = EPOLLIN | EPOLLRDHUP;
  watch(*s, s->dgram.get(), EPOLLIN, [this, s](uint32_t) { on_upstream_dgram_readable(*s); });
}

void BridgeRoute::count_open_failure(const std::string& peer, const Error& error) {
  if (out_of_descriptors(error.code)) {
    fd_limit_log_.hit(spec_.route_id, counters_.fd_limit, "upstream socket", error.code);
    return;
  }
  ++counters_.connect_failed;
  spdlog::warn("route {}: {}: {} (counted)", spec_.route_id, peer, error.describe());
}

BridgeRoute::Session* BridgeRoute::add_session(std::unique_ptr<Session> owned) {
  Session* s = owned.get();
  s->id = next_id_++;
  s->started_ns = s->last_ns = monotonic_ns();
  sessions_[s->id] = std::move(owned);
  return s;
}

// Puts one of the session's sockets on the loop. False when the loop
// refused it and the session closed (counted as failed).
bool BridgeRoute::watch(Session& s, int fd, uint32_t events, EventLoop::Handler handler) {
  if (auto st = loop_.add(fd, events, std::move(handler)); !st) {
    spdlog::warn("route {}: {}: {}; closing the session", spec_.route_id, s.peer, st.error().describe());
    close_session(s.id, true);
    return false;
  }
  return true;
}

void BridgeRoute::on_connected(Session& s) {
  if (int err = socket_error(s.conn.get()); err != 0) {
    ++counters_.connect_failed;
    counters_.dropped_messages += s.to_conn.entries();
    spdlog::warn("route {}: {}: connect to {}: {}; its datagrams are dropped (counted)", spec_.route_id,
                 s.peer, spec_.to->address.text, std::strerror(err));
    close_session(s.id, false);
    return;
  }
  s.connecting = false;
  ++counters_.sessions_created;
}

// Queues `len` bytes toward the connection; false (and counted) when the
// connection is not keeping up and they were dropped.
bool BridgeRoute::queue_to_conn(Session& s, const char* data, size_t len) {
  if (s.to_conn.bytes() + len > kQueueLimit) {
    ++counters_.dropped_messages;
    return false;
  }
  s.to_conn.push(data, len);
  s.last_ns = monotonic_ns();
  return true;
}

// Writes what waits toward the connection. False when the session closed.
bool BridgeRoute::flush_to_conn(Session& s) {
  SendQueue::Written written = s.to_conn.write_to(s.conn.get());
  counters_.user_bytes += written.bytes;
  counters_.user_messages += written.entries;
  if (written.error != 0) {
    spdlog::debug("route {}: session {}: send: {}", spec_.route_id, s.id, std::strerror(written.error));
    close_session(s.id, true);
    return false;
  }
  if (s.to_conn.empty() && s.conn_eof) {  // the connection side is done and everything for it is written
    ++counters_.sessions_closed;
    close_session(s.id, false);
    return false;
  }
  return true;
}

void BridgeRoute::on_conn_event(Session& s, uint32_t events) {
  uint64_t id = s.id;
  if (s.connecting) {
    on_connected(s);
    if (!sessions_.count(id)) return;
  }
  if ((events & EPOLLOUT) && !flush_to_conn(s)) return;
  if ((events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) && !read_conn(s)) return;
  update_events(s);
}

// Reads what the connection has, one message (seqpacket) or one chunk
// (stream) = one datagram toward the datagram end. False when the session
// closed.
bool BridgeRoute::read_conn(Session& s) {
  std::vector<char> buf(keeps_messages() ? kMaxMessage : kStreamChunk);
  for (int round = 0; round < kReadBatch; ++round) {
    ssize_t n = recv(s.conn.get(), buf.data(), buf.size(), MSG_DONTWAIT);
    if (n < 0) {
      if (would_block(errno)) break;
      spdlog::debug("route {}: session {}: recv: {}", spec_.route_id, s.id, std::strerror(errno));
      close_session(s.id, true);
      return false;
    }
    if (n == 0) {
      // EOF (an empty seqpacket message is indistinguishable here: ends it).
      if (datagram_source()) {
        ++counters_.sessions_closed;  // the upstream closed: the client's session ends
        close_session(s.id, false);
        return false;
      }
      s.conn_eof = true;
      return flush_to_conn(s);
    }
    s.last_ns = monotonic_ns();
    ssize_t sent =
        datagram_source()
            ? sendto(listener_.get(), buf.data(), static_cast<size_t>(n), MSG_DONTWAIT | MSG_NOSIGNAL,
                     reinterpret_cast<const sockaddr*>(&s.client), s.client_len)
            : send(s.dgram.get(), buf.data(), static_cast<size_t>(n), MSG_DONTWAIT | MSG_NOSIGNAL);
    if (sent < 0) {
      ++counters_.dropped_messages;  // datagram semantics: a full or absent receiver drops
      continue;
    }
    counters_.user_bytes += static_cast<uint64_t>(n);
    ++counters_.user_messages;
  }
  return true;
}

// Connection source: reply datagrams from the target, toward the client.
void BridgeRoute::on_upstream_dgram_readable(Session& s) {
  std::vector<char> buf(kMaxMessage);
  for (int round = 0; round < kReadBatch; ++round) {
    ssize_t n = recv(s.dgram.get(), buf.data(), buf.size(), MSG_DONTWAIT);
    if (n < 0) {
      if (would_block(errno)) break;
      ++counters_.dropped_messages;  // e.g. ECONNREFUSED: the target is not there (yet)
      continue;
    }
    queue_to_conn(s, buf.data(), static_cast<size_t>(n));  // false: dropped and counted
  }
  if (flush_to_conn(s)) update_events(s);
}

// False when the loop refused the change and the session closed.
bool BridgeRoute::update_events(Session& s) {
  uint32_t want = 0;
  if (s.connecting || !s.to_conn.empty()) want |= EPOLLOUT;
  if (!s.connecting && !s.conn_eof) want |= EPOLLIN | EPOLLRDHUP;
  if (want == s.conn_events) return true;
  if (auto st = loop_.modify(s.conn.get(), want); !st) {
    spdlog::warn("route {}: session {}: {}; closing it", spec_.route_id, s.id, st.error().describe());
    close_session(s.id, true);
    return false;
  }
  s.conn_events = want;
  return true;
}

void BridgeRoute::close_session(uint64_t id, bool failed) {
  auto it = sessions_.find(id);
  if (it == sessions_.end()) return;
  Session& s = *it->second;
  if (failed) ++counters_.sessions_failed;
  loop_.remove(s.conn.get());
  if (s.dgram) loop_.remove(s.dgram.get());
  if (!s.client_key.empty()) by_client_.erase(s.client_key);
  sessions_.erase(it);
  budget_.give_back();
  gate_.resume();  // a session and its descriptors are free again
}

void BridgeRoute::expire_idle() {
  uint64_t now = monotonic_ns();
  uint64_t idle = static_cast<uint64_t>(std::chrono::nanoseconds(spec_.idle_timeout).count());
  uint64_t connect_limit = static_cast<uint64_t>(std::chrono::nanoseconds(spec_.connect_timeout).count());
  std::vector<uint64_t> expired, timed_out;
  for (const auto& [id, s] : sessions_) {
    if (s->connecting && now - s->started_ns > connect_limit)
      timed_out.push_back(id);
    else if (!s->connecting && now - s->last_ns > idle)
      expired.push_back(id);
  }
  for (uint64_t id : timed_out) {
    ++counters_.connect_failed;
    spdlog::warn("route {}: session {}: connect to {} timed out (counted)", spec_.route_id, id,
                 spec_.to->address.text);
    close_session(id, false);
  }
  for (uint64_t id : expired) {
    ++counters_.sessions_expired;
    close_session(id, false);
  }
}

}  // namespace sockrelay
