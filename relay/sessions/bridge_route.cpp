#include "sessions/bridge_route.h"

#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "config/address.h"
#include "endpoints/endpoint.h"
#include "sessions/stop_drain.h"

namespace sockrelay {

namespace {

constexpr size_t kMaxMessage = 256 * 1024;   // largest datagram or seqpacket message carried whole
constexpr size_t kStreamChunk = 64 * 1024;   // one read of a byte stream = one datagram
constexpr size_t kQueueLimit = 4 << 20;      // bytes waiting toward one connection
constexpr uint64_t kRefusalLogEvery = 1000;  // refusals: one log line per this many

uint64_t now_ns() {
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                   std::chrono::steady_clock::now().time_since_epoch())
                                   .count());
}

bool would_block(int err) { return err == EAGAIN || err == EWOULDBLOCK || err == EINTR; }

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
  std::deque<std::string> to_conn;  // messages (seqpacket) or byte runs (stream) not yet written
  size_t to_conn_bytes = 0;
  uint32_t conn_events = 0;
  uint64_t started_ns = 0, last_ns = 0;
};

BridgeRoute::BridgeRoute(BridgeRouteSpec spec, Fd listener, EventLoop& loop, SessionBudget& budget)
    : spec_(std::move(spec)), listener_(std::move(listener)), loop_(loop), budget_(budget) {}

BridgeRoute::~BridgeRoute() { stop(); }

bool BridgeRoute::datagram_source() const { return kind_is_datagram(spec_.from->kind); }

Status BridgeRoute::start() {
  if (auto st = loop_.add(listener_.get(), EPOLLIN, [this](uint32_t) { on_listener_readable(); }); !st)
    return st;
  started_ = true;
  return {};
}

void BridgeRoute::stop() {
  if (!started_) return;
  deliver_before_stop();
  while (!sessions_.empty()) close_session(sessions_.begin()->first, false);
  loop_.remove(listener_.get());
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
  for (const auto& [id, s] : sessions_) counters_.dropped_messages += s->to_conn.size();
}

void BridgeRoute::on_listener_readable() {
  if (!datagram_source()) {
    on_accept();
    return;
  }
  std::vector<char> buf(kMaxMessage);
  for (int round = 0; round < 64; ++round) {
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
  Session* s = nullptr;
  if (found != by_client_.end()) {
    s = sessions_[found->second].get();
  } else {
    std::string peer_text = format_address(reinterpret_cast<const sockaddr*>(&peer), peer_len);
    if (std::string why = spec_.policy.refusal(-1, peer); !why.empty()) {
      if (counters_.refused_policy++ % kRefusalLogEvery == 0)
        spdlog::warn("route {}: refused {}: {} (counted)", spec_.route_id, peer_text, why);
      return;
    }
    if (!budget_.try_take()) {
      if (counters_.refused_max_sessions++ % kRefusalLogEvery == 0)
        spdlog::warn("route {}: max-sessions ({}) reached, refusing {} (counted)", spec_.route_id,
                     budget_.max(), peer_text);
      return;
    }
    auto conn = open_stream_upstream(*spec_.to);
    if (!conn) {
      budget_.give_back();
      ++counters_.connect_failed;
      spdlog::warn("route {}: {}: {} (counted)", spec_.route_id, peer_text, conn.error().describe());
      return;
    }
    auto owned = std::make_unique<Session>();
    s = owned.get();
    s->id = next_id_++;
    s->conn = std::move(*conn);
    s->client = peer;
    s->client_len = peer_len;
    s->client_key = key;
    s->peer = peer_text;
    s->connecting = true;
    s->started_ns = s->last_ns = now_ns();
    by_client_[key] = s->id;
    sessions_[s->id] = std::move(owned);
    s->conn_events = EPOLLOUT;  // writable = connected (or failed: SO_ERROR tells)
    (void)loop_.add(s->conn.get(), EPOLLOUT, [this, s](uint32_t events) { on_conn_event(*s, events); });
  }
  if (s->to_conn_bytes + len > kQueueLimit) {
    ++counters_.dropped_messages;  // the connection is not keeping up
    return;
  }
  s->to_conn.emplace_back(data, len);
  s->to_conn_bytes += len;
  s->last_ns = now_ns();
  if (!s->connecting && flush_to_conn(*s)) update_events(*s);
}

void BridgeRoute::on_accept() {
  for (int round = 0; round < 64; ++round) {
    sockaddr_storage peer{};
    socklen_t peer_len = sizeof(peer);
    Fd conn(accept4(listener_.get(), reinterpret_cast<sockaddr*>(&peer), &peer_len,
                    SOCK_NONBLOCK | SOCK_CLOEXEC));
    if (!conn) {
      if (!would_block(errno) && errno != ECONNABORTED)
        spdlog::warn("route {}: accept: {}", spec_.route_id, std::strerror(errno));
      return;
    }
    std::string peer_text = peer.ss_family == AF_UNIX
                                ? "unix client"
                                : format_address(reinterpret_cast<const sockaddr*>(&peer), peer_len);
    if (std::string why = spec_.policy.refusal(conn.get(), peer); !why.empty()) {
      if (counters_.refused_policy++ % kRefusalLogEvery == 0)
        spdlog::warn("route {}: refused {}: {} (counted)", spec_.route_id, peer_text, why);
      continue;
    }
    if (!budget_.try_take()) {
      if (counters_.refused_max_sessions++ % kRefusalLogEvery == 0)
        spdlog::warn("route {}: max-sessions ({}) reached, refusing {} (counted)", spec_.route_id,
                     budget_.max(), peer_text);
      continue;
    }
    auto dgram = open_datagram_upstream(*spec_.to);
    if (!dgram) {
      budget_.give_back();
      ++counters_.connect_failed;
      spdlog::warn("route {}: {}: {}; closing the client (counted)", spec_.route_id, peer_text,
                   dgram.error().describe());
      continue;
    }
    auto owned = std::make_unique<Session>();
    Session* s = owned.get();
    s->id = next_id_++;
    s->conn = std::move(conn);
    s->dgram = std::move(*dgram);
    s->peer = peer_text;
    s->started_ns = s->last_ns = now_ns();
    sessions_[s->id] = std::move(owned);
    ++counters_.sessions_created;
    s->conn_events = EPOLLIN | EPOLLRDHUP;
    (void)loop_.add(s->conn.get(), s->conn_events, [this, s](uint32_t events) { on_conn_event(*s, events); });
    (void)loop_.add(s->dgram.get(), EPOLLIN,
                    [this, s](uint32_t events) { on_upstream_dgram_event(*s, events); });
  }
}

void BridgeRoute::on_connected(Session& s) {
  int err = 0;
  socklen_t len = sizeof(err);
  getsockopt(s.conn.get(), SOL_SOCKET, SO_ERROR, &err, &len);
  if (err != 0) {
    ++counters_.connect_failed;
    counters_.dropped_messages += s.to_conn.size();
    spdlog::warn("route {}: {}: connect to {}: {}; its datagrams are dropped (counted)", spec_.route_id,
                 s.peer, spec_.to->address.text, std::strerror(err));
    close_session(s.id, false);
    return;
  }
  s.connecting = false;
  ++counters_.sessions_created;
}

// Writes what waits toward the connection. False when the session closed.
bool BridgeRoute::flush_to_conn(Session& s) {
  bool messages = kind_socktype(datagram_source() ? spec_.to->kind : spec_.from->kind) == SOCK_SEQPACKET;
  while (!s.to_conn.empty()) {
    std::string& front = s.to_conn.front();
    ssize_t n = send(s.conn.get(), front.data(), front.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n < 0) {
      if (would_block(errno)) return true;
      spdlog::debug("route {}: session {}: send: {}", spec_.route_id, s.id, std::strerror(errno));
      close_session(s.id, true);
      return false;
    }
    counters_.user_bytes += static_cast<uint64_t>(n);
    s.to_conn_bytes -= static_cast<size_t>(n);
    if (!messages && static_cast<size_t>(n) < front.size()) {
      front.erase(0, static_cast<size_t>(n));  // a byte stream takes part of a run
      return true;
    }
    ++counters_.user_messages;
    s.to_conn.pop_front();
  }
  if (s.conn_eof) {  // the connection side is done and everything for it is written
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
  if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) {
    // One message (seqpacket) or one chunk (stream) = one datagram.
    bool messages = kind_socktype(datagram_source() ? spec_.to->kind : spec_.from->kind) == SOCK_SEQPACKET;
    std::vector<char> buf(messages ? kMaxMessage : kStreamChunk);
    for (int round = 0; round < 64; ++round) {
      ssize_t n = recv(s.conn.get(), buf.data(), buf.size(), MSG_DONTWAIT);
      if (n < 0) {
        if (would_block(errno)) break;
        spdlog::debug("route {}: session {}: recv: {}", spec_.route_id, id, std::strerror(errno));
        close_session(id, true);
        return;
      }
      if (n == 0) {
        // EOF (an empty seqpacket message is indistinguishable here: ends it).
        if (datagram_source()) {
          ++counters_.sessions_closed;  // the upstream closed: the client's session ends
          close_session(id, false);
          return;
        }
        s.conn_eof = true;
        if (!flush_to_conn(s)) return;
        break;
      }
      s.last_ns = now_ns();
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
  }
  if (sessions_.count(id)) update_events(s);
}

// Connection source: a reply datagram from the target, toward the client.
void BridgeRoute::on_upstream_dgram_event(Session& s, uint32_t events) {
  (void)events;
  std::vector<char> buf(kMaxMessage);
  for (int round = 0; round < 64; ++round) {
    ssize_t n = recv(s.dgram.get(), buf.data(), buf.size(), MSG_DONTWAIT);
    if (n < 0) {
      if (would_block(errno)) break;
      ++counters_.dropped_messages;  // e.g. ECONNREFUSED: the target is not there (yet)
      continue;
    }
    if (s.to_conn_bytes + static_cast<size_t>(n) > kQueueLimit) {
      ++counters_.dropped_messages;
      continue;
    }
    s.to_conn.emplace_back(buf.data(), static_cast<size_t>(n));
    s.to_conn_bytes += static_cast<size_t>(n);
    s.last_ns = now_ns();
  }
  if (flush_to_conn(s)) update_events(s);
}

void BridgeRoute::update_events(Session& s) {
  uint32_t want = 0;
  if (s.connecting || !s.to_conn.empty()) want |= EPOLLOUT;
  if (!s.connecting && !s.conn_eof) want |= EPOLLIN | EPOLLRDHUP;
  if (want != s.conn_events) {
    (void)loop_.modify(s.conn.get(), want);
    s.conn_events = want;
  }
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
}

void BridgeRoute::expire_idle() {
  uint64_t now = now_ns();
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
